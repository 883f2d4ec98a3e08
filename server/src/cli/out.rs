//! Writing to stdout and stderr. A closed pipe (`sandmill ... | head`)
//! ends the command quietly, with success: the reader chose to stop. Any
//! other write error on stderr is ignored (there is nowhere left to say it).

use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether lines for people on stderr are written as JSON log lines
/// (`--log-format json`), so that everything a process writes there is
/// one JSON object per line.
static JSON_LINES: AtomicBool = AtomicBool::new(false);

/// Writes [`tell!`] lines as JSON objects from now on.
pub fn json_lines() {
    JSON_LINES.store(true, Ordering::Relaxed);
}

/// Writes one line for people on stderr (as a JSON log line after
/// [`json_lines`]).
pub fn tell_line(line: &str) {
    line_at("INFO", line);
}

/// Writes the line of a command's failure on stderr (as [`tell_line`]).
pub fn error_line(line: &str) {
    line_at("ERROR", line);
}

fn line_at(level: &str, line: &str) {
    if JSON_LINES.load(Ordering::Relaxed) {
        let object = serde_json::json!({
            "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
            "level": level,
            "message": line.trim_end_matches('\n'),
            "target": "sandmill",
        });
        stderr(format!("{object}\n").as_bytes());
    } else {
        stderr(line.as_bytes());
    }
}

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
        $crate::cli::out::tell_line(&format!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use tell;
