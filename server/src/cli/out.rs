//! Writing to stdout and stderr. A closed pipe (`sandmill ... | head`)
//! ends the command quietly, with success: the reader chose to stop. Any
//! other write error on stderr is ignored (there is nowhere left to say it).

use std::io::{ErrorKind, Write};

/// Writes bytes to stdout.
pub fn stdout(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    quiet_on_closed_pipe(out.write_all(bytes).and_then(|()| out.flush()))
}

/// Writes bytes to stderr.
pub fn stderr(bytes: &[u8]) {
    let mut err = std::io::stderr().lock();
    let _ = quiet_on_closed_pipe(err.write_all(bytes).and_then(|()| err.flush()));
}

/// A closed pipe ends the process quietly; other errors are the caller's.
pub fn quiet_on_closed_pipe(result: std::io::Result<()>) -> std::io::Result<()> {
    match result {
        Err(error) if error.kind() == ErrorKind::BrokenPipe => std::process::exit(0),
        other => other,
    }
}

/// `println!` that ends quietly on a closed pipe.
macro_rules! say {
    ($($arg:tt)*) => {
        // Other errors writing to stdout: nothing more useful to do.
        let _ = $crate::cli::out::stdout(format!("{}\n", format_args!($($arg)*)).as_bytes());
    };
}
pub(crate) use say;

/// `eprintln!` that ends quietly on a closed pipe.
macro_rules! tell {
    ($($arg:tt)*) => {
        $crate::cli::out::stderr(format!("{}\n", format_args!($($arg)*)).as_bytes())
    };
}
pub(crate) use tell;
