//! Hostile: tries to open a TCP connection to the address given as input.
//! Without the network grant the connection must be refused.

use std::io::Write;
use std::net::TcpStream;

use sandmill_sdk::{Context, Result};

#[sandmill_sdk::task]
fn run(input: &[u8], _ctx: &mut Context) -> Result<Vec<u8>> {
    let addr = std::str::from_utf8(input)?.trim().to_owned();
    let mut stream = TcpStream::connect(&addr)
        .map_err(|e| sandmill_sdk::Error::msg(format!("cannot connect to {addr}: {e}")))?;
    stream.write_all(b"escaped\n")?;
    Ok(b"connected".to_vec())
}
