//! The `dynapress` command: argument parsing and output only; the work is in
//! the library.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    default_sigpipe();
    keep_freed_memory();
    match cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            let mut msg = format!("error: {e}");
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("{msg}");
            if e.downcast_ref::<cli::BadArgument>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Output piped into a reader that stops early (`dynapress eval … | head`):
/// like every Unix filter, end quietly when the reader is gone. Rust ignores
/// SIGPIPE, which turns the failed write into a panic in `println!`; the
/// default action ends the process at once, without a message. Nothing is
/// lost: outputs are written under temporary names (cleaned by the next run)
/// and only printed about after they are in place.
fn default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal, before any threads.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Activation and logits buffers (tens of MiB) are allocated for every forward
/// pass. By default glibc serves blocks that large with fresh mmaps and returns
/// them on free, so every pass paid for page faults and kernel zeroing (13 % of
/// the forward pass in a profile). Serve them from the heap and keep it.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
