#!/usr/bin/env bash
# The import graph between the top-level modules of src/, read from the source
# text (no build): for each module, the other top-level modules it names as
# `crate::X` (library) or `dynapress::X` (src/cli, which uses the library as a
# dependent crate would). Comment lines are skipped; `#[cfg(test)]` code is
# counted like any other code.
#
# Prints, in the intended data-flow order (issue 15):
#   1. each module and the modules it imports;
#   2. backward imports: a module importing one later in the flow;
#   3. cycles: pairs that import each other, and every strongly connected
#      group of modules (modules that reach each other through imports).
# Exit status 0 whatever it finds (it reports; it does not judge).
#
# Usage: scripts/module_graph.sh [REPO_ROOT]
set -euo pipefail
root=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$root/src"

# Flow order; modules with the same rank are one stage. fsutil, progress and
# error are infrastructure (rank 0: anyone may import them).
order="error:0 fsutil:0 progress:0 formats:0 model:1 data:2 calib:3 database:4 selection:5 search:6 export:7 eval:8 report:9 pipeline:10 estimate:10 cli:11"

# Files of each module: src/X.rs or everything under src/X/.
files_of() {
    if [[ -d $1 ]]; then find "$1" -name '*.rs' | sort; else echo "$1.rs"; fi
}

edges=$(
    for entry in $order; do
        m=${entry%%:*}
        prefix=crate
        [[ $m == cli ]] && prefix=dynapress
        files_of "$m" | xargs grep -hvE '^[[:space:]]*//' 2>/dev/null |
            grep -oE "\b$prefix::[a-z_]+" | sed "s/^$prefix:://" | sort -u |
            awk -v m="$m" '$1 != m { print m, $1 }'
    done
)

awk -v order="$order" '
BEGIN {
    n = split(order, o, " ")
    for (i = 1; i <= n; i++) { split(o[i], p, ":"); mod[i] = p[1]; rank[p[1]] = p[2]; idx[p[1]] = i }
}
{ if (!($2 in rank)) next; e[$1, $2] = 1; out[$1] = out[$1] " " $2 }
END {
    print "== imports (module -> top-level modules it uses)"
    for (i = 1; i <= n; i++) {
        m = mod[i]; s = ""
        for (j = 1; j <= n; j++) if ((m, mod[j]) in e) s = s " " mod[j]
        printf "%-9s ->%s\n", m, (s == "" ? " (none)" : s)
    }
    print ""
    print "== backward imports (imports a module later in the flow)"
    nb = 0
    for (i = 1; i <= n; i++) for (j = 1; j <= n; j++)
        if ((mod[i], mod[j]) in e && rank[mod[j]] > rank[mod[i]]) {
            printf "BACKWARD  %s -> %s\n", mod[i], mod[j]; nb++
        }
    if (nb == 0) print "none"
    print ""
    print "== cycles"
    nc = 0
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++)
        if ((mod[i], mod[j]) in e && (mod[j], mod[i]) in e) {
            printf "CYCLE     %s <-> %s\n", mod[i], mod[j]; nc++
        }
    # Reachability (Warshall), then groups of mutually reachable modules.
    for (i = 1; i <= n; i++) for (j = 1; j <= n; j++) r[i, j] = ((mod[i], mod[j]) in e)
    for (k = 1; k <= n; k++) for (i = 1; i <= n; i++) if (r[i, k]) for (j = 1; j <= n; j++) if (r[k, j]) r[i, j] = 1
    for (i = 1; i <= n; i++) {
        if (done[i] || !r[i, i]) continue
        s = mod[i]; done[i] = 1; c = 1
        for (j = i + 1; j <= n; j++) if (r[i, j] && r[j, i]) { s = s " " mod[j]; done[j] = 1; c++ }
        printf "CYCLE     group of %d: %s\n", c, s; nc++
    }
    if (nc == 0) print "none"
}' <<<"$edges"
