//! The `sandmill` command: parses its arguments, installs logging and hands
//! over to [`cli`].

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SANDMILL_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,rustls_platform_verifier=off")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli::run(args) {
        Ok(code) => code,
        Err(error) => {
            // One line a user can act on: the chain of causes, outermost first.
            cli::out::stderr(
                format!("error: {}\n", format!("{error:#}").replace('\n', " ")).as_bytes(),
            );
            ExitCode::FAILURE
        }
    }
}
