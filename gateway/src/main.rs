//! `streamgate`: serve, mint, keygen. The only place that uses `anyhow`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use streamgate::app::App;
use streamgate::cli::{Cli, Command, LogFormat, MintArgs, ServeArgs, sidecar_next_to};
use streamgate::config::Config;
use streamgate::plugin::{PluginEngine, StreamRequest, builtin};
use streamgate::sidecar::{SidecarClient, Supervisor, SupervisorSettings};
use streamgate::tenant::Tenants;
use streamgate_protocol::logline::OneLine;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// After the drain deadline: time for aborted connections to close before the sidecar stops.
const ABORT_GRACE: Duration = Duration::from_secs(2);
/// Time the sidecar gets to exit on SIGTERM before SIGKILL.
const SIDECAR_STOP_GRACE: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let quiet = !matches!(cli.command, Command::Serve(_));
    init_tracing(quiet, cli.log_format);
    match cli.command {
        Command::Serve(args) => serve(args, cli.log_format).await,
        Command::Mint(args) => mint(args).await,
        Command::Keygen => {
            println!("{}", builtin::xchacha_generate_key());
            Ok(())
        }
        Command::CheckConfig { file } => check_config(&file),
    }
}

/// Everything `serve` would check before listening: parse, fields, secrets, plugins — the
/// very builder `serve` uses. A refusal is one plain message on stderr (no backtrace) and
/// exit status 1.
fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    let checked = Config::load(file).and_then(|config| {
        let socket = config.sidecar.connect.clone().unwrap_or_default();
        let timeout = Duration::from_secs(config.sidecar.metadata_timeout_secs);
        App::new(&config, SidecarClient::new(socket, timeout))?;
        Ok(config)
    });
    match checked {
        Ok(config) => {
            let ids: Vec<&str> = config.tenants.iter().map(|t| t.id.as_str()).collect();
            println!(
                "{}: ok ({} tenants: {})",
                file.display(),
                ids.len(),
                ids.join(", ")
            );
            Ok(())
        }
        Err(e) => {
            eprintln!("invalid configuration {}:\n{e}", file.display());
            std::process::exit(1);
        }
    }
}

/// Logs go to stderr (stdout is `mint`'s output); `RUST_LOG` overrides the level.
fn init_tracing(quiet: bool, format: LogFormat) {
    let default = if quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| OneLine(std::io::stderr()));
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().init(),
    }
}

async fn serve(args: ServeArgs, log_format: LogFormat) -> anyhow::Result<()> {
    let args = Arc::new(args);
    let config = args.config()?;
    // The sidecar to connect to, and how to run it unless it runs on its own.
    let (socket, spawn) = match &config.sidecar.connect {
        Some(socket) => (socket.clone(), None),
        None => {
            let socket = args.sidecar_socket(&config)?;
            let binary = match &config.sidecar.binary {
                Some(b) => b.clone(),
                None => sidecar_next_to(&std::env::current_exe()?),
            };
            let mut sidecar_args = Vec::new();
            if let Some(y) = &config.sidecar.yt_dlp {
                sidecar_args.extend(["--yt-dlp".to_owned(), y.display().to_string()]);
            }
            if let Some(n) = config.sidecar.max_jobs {
                sidecar_args.extend(["--max-jobs".to_owned(), n.to_string()]);
            }
            if log_format == LogFormat::Json {
                sidecar_args.push("--log-json".to_owned());
            }
            sidecar_args.extend(config.sidecar.args.iter().cloned());
            let settings = SupervisorSettings::new(binary, socket.clone(), sidecar_args);
            (socket, Some(settings))
        }
    };
    let metadata_timeout = Duration::from_secs(config.sidecar.metadata_timeout_secs);
    let app = Arc::new(App::new(
        &config,
        SidecarClient::new(socket, metadata_timeout),
    )?);
    let supervisor = spawn.map(Supervisor::start);

    let loader = {
        let args = args.clone();
        Box::new(move || args.config())
    };
    let source = match &args.source.config {
        Some(file) => file.display().to_string(),
        None => format!(
            "embedded default, keys in {}",
            args.source.state_dir.display()
        ),
    };
    streamgate::app::reload_on_sighup(app.clone(), loader, source, config.clone())?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    // Bound and announced before the public listener, so whoever waits for the public
    // line finds the admin one too.
    if let Some(admin) = config.server.admin_listen.0 {
        let listener = tokio::net::TcpListener::bind(admin)
            .await
            .with_context(|| format!("binding the admin listener {admin}"))?;
        let admin = listener.local_addr()?;
        let serve = streamgate::server::run_admin(listener, app.clone(), stop.clone());
        tokio::spawn(serve);
        tracing::info!("admin listener on http://{admin} (/metrics, /readyz)");
    }
    let server = streamgate::server::run(listener, app.clone(), stop.clone());
    let mut server = tokio::spawn(server);
    tracing::info!("listening on http://{addr}");
    let mint_hint = match &args.source.config {
        Some(c) => format!(
            "streamgate mint --config {} --tenant ID --url URL",
            c.display()
        ),
        None => format!(
            "streamgate mint --state-dir {} --url URL",
            args.source.state_dir.display()
        ),
    };
    tracing::info!("mint a link: {mint_hint}, then GET http://{addr}/stream?data=TOKEN");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        res = &mut server => bail!("the HTTP server stopped: {res:?}"),
    }
    let drain = config.drain();
    tracing::info!(active = app.drain.active(), deadline = ?drain, "draining");
    stop.cancel();
    if tokio::time::timeout(drain, &mut server).await.is_err() {
        tracing::warn!(
            active = app.drain.active(),
            "drain deadline passed; aborting streams"
        );
        app.drain.abort_all();
        let _ = tokio::time::timeout(ABORT_GRACE, &mut server).await;
    }
    if let Some(supervisor) = supervisor {
        supervisor.stop(SIDECAR_STOP_GRACE).await;
    }
    tracing::info!("stopped");
    Ok(())
}

async fn mint(args: MintArgs) -> anyhow::Result<()> {
    let config = args.source.load(false)?;
    let engine = PluginEngine::new(config.plugins.clone()).context("starting the plugin engine")?;
    let tenants = Tenants::build(&engine, &config)?;
    let tenant = match &args.tenant {
        Some(id) => tenants
            .get(id)
            .with_context(|| format!("no tenant {id:?}"))?,
        None => tenants.default_tenant(),
    };
    let ttl = args.ttl.map_or(tenant.default_ttl, Duration::from_secs);
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let request = StreamRequest {
        url: args.url,
        format: args.format,
        filename: args.filename,
        expires_at: Some((now + ttl).as_secs()),
    };
    let sealed = tenant.token.seal(&tenant.id, &request).await;
    match sealed.with_context(|| format!("plugin {} failed", tenant.token.name()))? {
        Ok(token) => {
            println!("{token}");
            Ok(())
        }
        Err(msg) => bail!("plugin {} cannot seal: {msg}", tenant.token.name()),
    }
}
