//! `sandmill token create|list|revoke`: API tokens, written straight to
//! the database (an operator's command: it needs the database URL, not a
//! token, so the first admin token can be made).

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use sandmill_server::api::auth::{Role, hash_secret, new_token};
use sandmill_server::fleet::connect_store;

use super::out::{say, tell};

#[derive(Args, Debug)]
pub struct TokenArgs {
    #[command(flatten)]
    database: DatabaseArg,
    #[command(subcommand)]
    action: TokenAction,
}

/// `--database` of an operator's command, taken before or after its
/// subcommand (`sandmill token --database X create` and `sandmill token
/// create --database X` alike).
#[derive(Args, Debug)]
pub(super) struct DatabaseArg {
    /// The server's database (postgres://... or a SQLite path).
    #[arg(long, env = "SANDMILL_DATABASE", global = true)]
    database: Option<String>,
}

impl DatabaseArg {
    /// The database's URL, or a one-line error saying how to give it.
    pub(super) fn url(&self) -> anyhow::Result<&str> {
        self.database.as_deref().context(
            "which database? give the server's with --database postgres://... (or a SQLite path), or set SANDMILL_DATABASE",
        )
    }
}

#[derive(Subcommand, Debug)]
enum TokenAction {
    /// Create a token and print its secret (shown this once).
    Create {
        /// The tenant it acts for.
        #[arg(long)]
        tenant: String,
        /// admin (every tenant), user (submit, cancel, read) or reader.
        #[arg(long, default_value = "user")]
        role: String,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by its id: requests with it get 401 from then on.
    Revoke {
        /// Its id (as `list` shows it).
        id: String,
    },
}

/// Checks a tenant name: letters, digits, `-`, `_` and `.`, 1 to 64.
pub(super) fn check_tenant(tenant: &str) -> anyhow::Result<()> {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    anyhow::ensure!(
        !tenant.is_empty() && tenant.len() <= 64 && tenant.chars().all(valid),
        "--tenant `{tenant}`: use 1 to 64 letters, digits, `-`, `_` and `.`"
    );
    Ok(())
}

pub fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        match args.action {
            TokenAction::Create { tenant, role } => {
                check_tenant(&tenant)?;
                let role = Role::parse(&role)
                    .with_context(|| format!("--role `{role}`: one of admin, user, reader"))?;
                let store = connect_store(args.database.url()?).await?;
                let (id, secret) = new_token()?;
                store
                    .put_token(&id, &hash_secret(&secret), &tenant, role.as_str())
                    .await?;
                say!("{secret}");
                tell!(
                    "token {id} for tenant `{tenant}` ({}); the secret above is shown only now",
                    role.as_str()
                );
            }
            TokenAction::List => {
                let store = connect_store(args.database.url()?).await?;
                say!("{:<12}  {:<24}  {:<6}  state", "id", "tenant", "role");
                let mut after: Option<String> = None;
                loop {
                    let page = store.tokens(after.as_deref(), 500).await?;
                    let Some(last) = page.last() else { break };
                    after = Some(last.id.clone());
                    for token in page {
                        say!(
                            "{:<12}  {:<24}  {:<6}  {}",
                            token.id,
                            token.tenant,
                            token.role,
                            if token.revoked_at.is_some() {
                                "revoked"
                            } else {
                                "live"
                            }
                        );
                    }
                }
            }
            TokenAction::Revoke { id } => {
                let store = connect_store(args.database.url()?).await?;
                store
                    .revoke_token(&id)
                    .await?
                    .with_context(|| format!("no token {id}"))?;
                tell!("token {id} revoked");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
