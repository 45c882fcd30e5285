//! The command line: `tollgate [serve]`, `tollgate mock-provider`, `tollgate token`,
//! `tollgate key new`.

use crate::config::{load, Config, ConfigSource};
use crate::mock::{self, Fault, Framing, MockFormats, MockOptions};
use crate::reload::Source;
use crate::startup::{start, StartOptions};
use crate::telemetry::init_logging;
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Security and cost gateway for LLM chat endpoints"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve(ServeArgs),
    /// Run the mock provider (OpenAI and Anthropic APIs) alone.
    MockProvider(MockArgs),
    /// Print an HS256 token signed with the configured secret.
    Token(TokenArgs),
    /// Service keys for trusted front ends (chat UIs' backends).
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Print a fresh random key and the `[auth.service_keys.NAME]` lines that trust it.
    New(KeyNewArgs),
}

#[derive(Debug, Args)]
struct KeyNewArgs {
    /// The front end's name: its users become `NAME:<user>`.
    #[arg(long)]
    name: String,
}

#[derive(Debug, Args, Default)]
struct ServeArgs {
    /// Config file (TOML); else TOLLGATE_CONFIG; else built-in defaults.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct MockArgs {
    #[arg(long, default_value = "127.0.0.1:9090")]
    listen: String,
    /// Tokens per reply.
    #[arg(long, default_value_t = 40)]
    tokens: u32,
    /// Token pace; 0 = as fast as possible.
    #[arg(long, default_value_t = 50.0)]
    tokens_per_second: f64,
    /// Delay before the first chunk.
    #[arg(long, default_value_t = 100)]
    first_token_delay_ms: u64,
    /// Generate `--tokens` whatever `max_tokens` says.
    #[arg(long)]
    ignore_max_tokens: bool,
    /// Fault to inject: error@N, close@N, stall@N or status@CODE.
    #[arg(long)]
    fault: Option<String>,
    /// API families served: openai (/chat/completions, /v1/chat/completions), anthropic
    /// (/v1/messages) or both; the other family's routes answer 404.
    #[arg(long, default_value = "both")]
    format: MockFormats,
    /// Stream framing: normal, or bytes, crlf and pings joined by `+`.
    #[arg(long, default_value = "normal")]
    framing: Framing,
    /// End every reply with a call of this tool.
    #[arg(long)]
    tool: Option<String>,
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// User id (`sub` claim).
    #[arg(long)]
    sub: String,
    /// Plan (`plan` claim).
    #[arg(long)]
    plan: String,
    /// Lifetime in seconds (at most auth.max_token_lifetime_secs).
    #[arg(long)]
    ttl: Option<u64>,
}

/// Runs the command line; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    match cli.command {
        None => serve(cli.serve, env),
        Some(Command::Serve(args)) => serve(
            ServeArgs {
                config: args.config.or(cli.serve.config),
            },
            env,
        ),
        Some(Command::MockProvider(args)) => mock_provider(args),
        Some(Command::Token(args)) => token(args, cli.serve.config, env),
        Some(Command::Key(KeyCommand::New(args))) => new_key(&args.name),
    }
}

fn load_config(
    file: Option<PathBuf>,
    env: std::collections::BTreeMap<String, String>,
) -> Result<Config, ExitCode> {
    load(&ConfigSource { file, env }).map_err(|e| {
        eprintln!("tollgate: {e}");
        ExitCode::from(2)
    })
}

fn serve(args: ServeArgs, env: std::collections::BTreeMap<String, String>) -> ExitCode {
    init_logging();
    let config = match load_config(args.config.clone(), env) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let options = StartOptions {
        reload_source: Source::Process { file: args.config },
        ..StartOptions::default()
    };
    let listener = match TcpListener::bind(&config.server.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "tollgate: cannot listen on {} (server.listen): {e}",
                config.server.listen
            );
            return ExitCode::from(1);
        }
    };
    let result = actix_rt::System::new().block_on(async move {
        let gateway = start(config, listener, options)?;
        gateway.server.await?;
        // Stopped gracefully (SIGTERM/SIGINT): save the final state.
        if let Some(snapshots) = gateway.snapshots {
            snapshots
                .write()
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            tracing::info!("saved the state snapshot");
        }
        Ok::<(), std::io::Error>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate: {e}");
            ExitCode::from(1)
        }
    }
}

fn mock_provider(args: MockArgs) -> ExitCode {
    init_logging();
    let fault = match args.fault.as_deref().map(str::parse::<Fault>).transpose() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("tollgate mock-provider: --fault: {e}");
            return ExitCode::from(2);
        }
    };
    let options = MockOptions {
        tokens: args.tokens,
        tokens_per_second: args.tokens_per_second,
        first_token_delay_ms: args.first_token_delay_ms,
        ignore_max_tokens: args.ignore_max_tokens,
        fault,
        formats: args.format,
        framing: args.framing,
        tool: args.tool,
        ..MockOptions::default()
    };
    let listener = match TcpListener::bind(&args.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "tollgate mock-provider: cannot listen on {}: {e}",
                args.listen
            );
            return ExitCode::from(1);
        }
    };
    let result = actix_rt::System::new().block_on(async move {
        let server = mock::serve(listener, options)?;
        tracing::info!(listen = %server.addr, "mock provider is serving");
        server.server.await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate mock-provider: {e}");
            ExitCode::from(1)
        }
    }
}

fn token(
    args: TokenArgs,
    config: Option<PathBuf>,
    env: std::collections::BTreeMap<String, String>,
) -> ExitCode {
    let config = match load_config(config, env) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let max = config.auth.max_token_lifetime_secs;
    let ttl = args.ttl.unwrap_or(max);
    if ttl == 0 || ttl > max {
        eprintln!(
            "tollgate token: --ttl must be between 1 and {max} (auth.max_token_lifetime_secs)"
        );
        return ExitCode::from(2);
    }
    match crate::auth::mint(&config.auth, &args.sub, &args.plan, ttl) {
        Ok(token) => {
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{token}").is_err() {
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tollgate token: {e}");
            ExitCode::from(1)
        }
    }
}

/// `tollgate key new --name NAME`: the key on the first line (give it to the front end as its
/// API key; it is stored nowhere), then the config table that trusts it.
fn new_key(name: &str) -> ExitCode {
    if !crate::config::is_service_key_name(name) {
        eprintln!("tollgate key new: --name may hold only letters, digits, '_' and '-'");
        return ExitCode::from(2);
    }
    let (key, hash) = crate::auth::new_key();
    let text = format!(
        "{key}\n\n\
         # The key above is shown once: give it to the front end as its API key.\n\
         [auth.service_keys.{name}]\n\
         key_sha256 = \"{hash}\"\n\
         user_header = \"\"      # the header naming the end user, e.g. \"x-openwebui-user-id\"\n"
    );
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(1),
    }
}
