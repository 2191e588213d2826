//! The `dynapress` command: argument parsing and output only; the work is in
//! the library.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
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
            ExitCode::FAILURE
        }
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
