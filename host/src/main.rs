//! The `inboxd` command: parses the CLI, loads the config, installs logging and signal
//! handling, and runs the daemon or a tool. Errors are printed with their whole chain.

mod cli;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use inboxd::config::Config;
use inboxd::held::{self, Selection};
use inboxd::plugin::{Compiler, Grant, Inspection, PluginConfig, trial};
use inboxd::store::Store;
use inboxd::token::{ClientIds, TokenRequest, mint, scopes};
use inboxd::webhook::endpoint::redact;
use tokio_util::sync::CancellationToken;

use cli::{
    CheckArgs, Cli, ClientIdsArg, Command, ConsoleCommand, HealthcheckArgs, HeldArgs, HeldCommand, HeldSelectArgs,
    HookArg, ImportChat21Args, ImportCommand, PluginCommand, PrecompileArgs, RunArgs, TestArgs, TokenArgs,
    WebhooksCommand,
};

/// mimalloc: the pipeline allocates on one thread and frees on another, which glibc's malloc
/// handles slowly (malloc and free were a sixth of the daemon's CPU under load).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    without_huge_pages();
    one_c_heap();
    prompt_purge();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args).map(|()| ExitCode::SUCCESS),
        Command::Plugin(PluginCommand::Check(args)) => plugin_check(&args),
        Command::Plugin(PluginCommand::Test(args)) => plugin_test(&args),
        Command::Plugin(PluginCommand::Precompile(args)) => plugin_precompile(&args).map(|()| ExitCode::SUCCESS),
        Command::Held(command) => held(command),
        Command::Webhooks(command) => webhooks(command).map(|()| ExitCode::SUCCESS),
        Command::Token(args) => token(&args).map(|()| ExitCode::SUCCESS),
        Command::Healthcheck(args) => healthcheck(&args),
        Command::Import(ImportCommand::Chat21(args)) => import_chat21(&args).map(|()| ExitCode::SUCCESS),
        Command::Console(ConsoleCommand::HashPassword) => hash_password().map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("inboxd: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Turns transparent huge pages off for this process. mimalloc asks for them on its 1 GiB arena,
/// so each 2 MiB of it that the heap touched became resident whole: 26 of the 49 MiB the heap
/// held under `inboxd-bench --preset chat21`. Memory this small gains nothing from them.
fn without_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE only sets a flag of this process; it takes no pointers. Best
    // effort: a kernel without it keeps its own policy.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

/// Keeps C's heap in one arena. Rust's allocations go to mimalloc, so glibc's malloc serves
/// SQLite alone; but glibc gives each thread that allocates an arena of its own (up to eight per
/// core), and the store's writes run on whichever blocking-pool thread is free, a pool whose
/// idle threads end and are replaced. So SQLite's page cache and statements spread over ever
/// more arenas, each keeping its own free memory: at the preset, three new arenas grew by ~170
/// KiB a minute each from the tenth minute on.
fn one_c_heap() {
    // SAFETY: mallopt only changes a setting of glibc's allocator, before any other thread runs.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
}

/// mimalloc's `purge_delay` option (`mi_option_purge_delay` in mimalloc.h; libmimalloc-sys
/// names only some of the options).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Gives memory mimalloc no longer uses back to the OS after 10 ms instead of its default second
/// (mimalloc 2 waited 10 ms, 100 for its arenas; version 3 waits 1,000 for both). At
/// `inboxd-bench --preset chat21` a second of freed message buffers stayed resident: peak RSS
/// 58–60 MiB, against 51–54 at 10 ms, at the same CPU per message within the noise (at 0,
/// purging at once, it cost more CPU).
fn prompt_purge() {
    // SAFETY: mi_option_set stores an integer setting; mimalloc reads it when it next purges.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10) };
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut env: HashMap<String, String> = std::env::vars().collect();
    if let Some(format) = args.log_format {
        env.insert("INBOXD_LOG_FORMAT".into(), format);
    }
    let config = Config::load(args.config.as_deref(), &env)?;
    inboxd::telemetry::init(&config.log.level, config.log.format).context("setting up logging")?;
    let metrics = inboxd::http::install_recorder()?;
    let compiler = Compiler::Child(own_executable()?);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        inboxd::serve(config, args.config, env, Some(metrics), compiler, shutdown).await
    })
}

/// This executable, to run again as the plugin compiler. On Linux `/proc/self/exe`, which runs
/// this very build even after a package upgrade replaced the file: code compiled by another
/// version would not load.
fn own_executable() -> anyhow::Result<std::path::PathBuf> {
    let proc_self = std::path::Path::new("/proc/self/exe");
    if proc_self.exists() {
        return Ok(proc_self.to_owned());
    }
    std::env::current_exe().context("locating the inboxd executable")
}

/// Compiles the component on stdin for the daemon's engine and writes the code to stdout: what
/// the daemon runs in a child process (`Compiler::Child`) to keep the compiler's memory out of
/// its own. It yields to the daemon's work: compiling can take seconds of both cores and hundreds
/// of MiB, so should memory run out, the kernel's OOM killer takes the compiler first.
fn plugin_precompile(args: &PrecompileArgs) -> anyhow::Result<()> {
    // SAFETY: setpriority only lowers this process's scheduling priority. Best effort.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
    // Raising one's own score needs no privilege; best effort, like the priority.
    let _ = std::fs::write("/proc/self/oom_score_adj", "1000");
    let mut wasm = Vec::new();
    std::io::stdin().read_to_end(&mut wasm).context("reading the component from stdin")?;
    inboxd::plugin::precompile(args.fuel, &wasm, &mut std::io::stdout().lock())
}

/// Prints a user JWT signed with the configured broker key (`[auth]`).
fn token(args: &TokenArgs) -> anyhow::Result<()> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let config = Config::load(args.config.as_deref(), &env)?;
    let auth = &config.auth;
    let client_ids = match args.client_ids {
        Some(ClientIdsArg::Any) => ClientIds::Any,
        Some(ClientIdsArg::Prefix) => ClientIds::Prefix,
        Some(ClientIdsArg::Exact) => ClientIds::Exact,
        None => auth.client_ids,
    };
    let app = args.app.as_deref().unwrap_or(&config.app_id);
    let ttl = args.ttl.map_or(auth.ttl, |secs| std::time::Duration::from_secs(secs.max(1)));
    let request = TokenRequest::now(&args.user, app, &auth.resource_server_id, client_ids, ttl);
    if args.scopes {
        println!("{}", scopes(&args.user, app, &auth.resource_server_id, client_ids).join("\n"));
    } else {
        println!("{}", mint(&auth.secret, Some(&auth.key_id), &request)?);
    }
    Ok(())
}

/// Reads a chat21 deployment's `mongoexport` files into the configured store and prints what
/// each collection did.
fn import_chat21(args: &ImportChat21Args) -> anyhow::Result<()> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let config = Config::load(args.config.as_deref(), &env)?;
    inboxd::telemetry::init(&config.log.level, config.log.format).context("setting up logging")?;
    let app = args.app.clone().unwrap_or_else(|| config.app_id.clone());
    inboxd::chat21::check_id("app", &app).map_err(|e| anyhow::anyhow!("--app: {e}"))?;
    let files = inboxd::import::Files {
        groups: args.groups.clone(),
        conversations: args.conversations.clone(),
        messages: args.messages.clone(),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let store =
            Store::open(&config.store.url).await?.context("store.url is `none`: there is nowhere to import to")?;
        let imported = inboxd::import::chat21(&store, &app, &files).await;
        store.close().await;
        for (collection, counts) in imported? {
            println!("{}: {counts}", collection.name());
        }
        anyhow::Ok(())
    })
}

/// Prints the Argon2id hash of the password on the first line of stdin (never an argument, so
/// it stays out of the shell history and the process list).
fn hash_password() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("reading the password from standard input")?;
    let password = line.strip_suffix('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).unwrap_or(&line);
    anyhow::ensure!(!password.is_empty(), "no password on standard input");
    println!("{}", inboxd::console::password::hash(password)?);
    Ok(())
}

/// Asks a running daemon's `/readyz` (or another path); for container health checks.
fn healthcheck(args: &HealthcheckArgs) -> anyhow::Result<ExitCode> {
    let timeout = std::time::Duration::from_secs(5);
    let mut stream = std::net::TcpStream::connect_timeout(&args.address, timeout)
        .with_context(|| format!("connecting to {}", args.address))?;
    stream.set_read_timeout(Some(timeout))?;
    write!(stream, "GET {} HTTP/1.0\r\nHost: {}\r\n\r\n", args.path, args.address)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).context("reading the response")?;
    let status = response.lines().next().unwrap_or_default();
    println!("{status}");
    Ok(if status.split_whitespace().nth(1) == Some("200") { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Prints what the host thinks of a component; fails when it would not load.
fn plugin_check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let inspection = Inspection::of_file(&args.file, &grants(&args.grants)?)?;
    println!("{inspection}");
    Ok(if inspection.loadable() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Runs one hook of a plugin on a message file and prints the verdict and timings.
fn plugin_test(args: &TestArgs) -> anyhow::Result<ExitCode> {
    inboxd::telemetry::init("info", inboxd::telemetry::LogFormat::Human).context("setting up logging")?;
    let text = std::fs::read_to_string(&args.message).with_context(|| format!("reading {}", args.message.display()))?;
    let body = serde_json::from_str(&text).with_context(|| format!("parsing {}", args.message.display()))?;
    let mut spec = PluginConfig::for_file(&args.file);
    serde_json::from_str::<serde_json::Value>(&args.config).context("--config is not valid JSON")?;
    spec.config_json.clone_from(&args.config);
    spec.grants = grants(&args.grants)?;
    spec.deadline = std::time::Duration::from_millis(args.deadline_ms.max(1));
    spec.memory_bytes = args.memory_mb.max(1) * 1024 * 1024;
    spec.fuel = args.fuel;
    let deliver_to = match args.hook {
        HookArg::OnMessage => None,
        HookArg::OnDeliver => Some(args.inbox_of.as_deref().unwrap_or("")),
    };
    let trial = trial::run(&spec, body, deliver_to, args.repeat)?;
    println!("{trial}");
    Ok(if trial.answer.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Exit status 1 when a release refused an entry (each is named on stderr).
fn held(command: HeldCommand) -> anyhow::Result<ExitCode> {
    let (args, action) = match command {
        HeldCommand::List(args) => (args, None),
        HeldCommand::Release(select) => selection(select, true),
        HeldCommand::Discard(select) => selection(select, false),
    };
    let env: HashMap<String, String> = std::env::vars().collect();
    let config = Config::load(args.config.as_deref(), &env)?;
    inboxd::telemetry::init(&config.log.level, config.log.format).context("setting up logging")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        match action {
            None => {
                held::list(&config.held_setup(), |listed| println!("{}", listing(&listed))).await?;
            }
            Some((selection, true)) => {
                let done = held::release(&config.held_setup(), &selection, |refused| {
                    let id = refused.message_id.as_deref().unwrap_or("?").escape_debug();
                    let (position, error) = (refused.position, &refused.error);
                    eprintln!("inboxd: refused held entry {id} (position {position}): {error:#}; left in the queue");
                })
                .await?;
                println!("released {}", done.released);
                if done.refused > 0 {
                    eprintln!("inboxd: refused {} held entries (see `inboxd held list`)", done.refused);
                    return Ok(ExitCode::FAILURE);
                }
            }
            Some((selection, false)) => {
                println!("discarded {}", held::discard(&config.held_setup(), &selection).await?)
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// One line of `inboxd held list`: tab-separated, `signature=` says whether a release delivers it.
/// What an entry claims is escaped: a forged one must not drive the moderator's terminal.
fn listing(listed: &held::Listed) -> String {
    let signature = match &listed.check {
        held::Check::Valid => "valid".to_owned(),
        held::Check::NoKey => "unchecked (held.secret not set)".to_owned(),
        held::Check::Refused(error) => format!("refused: {error}"),
    };
    match &listed.entry {
        Ok(entry) => {
            let text = entry.body.get("text").and_then(|t| t.as_str()).unwrap_or("");
            format!(
                "{}\t{} -> {}\tplugin={}\treason={}\tsignature={signature}\ttext={text:?}",
                entry.message_id.escape_debug(),
                entry.sender.escape_debug(),
                entry.recipient.escape_debug(),
                entry.plugin.escape_debug(),
                entry.reason.escape_debug()
            )
        }
        Err(error) => format!("-\tunreadable entry at position {}: {error}\tsignature={signature}", listed.position),
    }
}

fn webhooks(command: WebhooksCommand) -> anyhow::Result<()> {
    let (args, replay) = match command {
        WebhooksCommand::Dead(args) => (args, None),
        WebhooksCommand::Replay(replay) => (replay.config, Some(replay.id.filter(|_| !replay.all))),
    };
    let env: HashMap<String, String> = std::env::vars().collect();
    let config = Config::load(args.config.as_deref(), &env)?;
    inboxd::telemetry::init(&config.log.level, config.log.format).context("setting up logging")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let store = Store::open_existing(&config.store.url)
            .await?
            .context("store.url is `none`: there is no webhook outbox")?;
        match replay {
            None => list_dead_webhooks(&store, &config.app_id).await?,
            Some(id) => {
                let now = inboxd::clock::now_ms();
                println!("replayed {}", store.replay_webhooks(&config.app_id, id.as_deref(), now).await?);
            }
        }
        store.close().await;
        anyhow::Ok(())
    })
}

/// Dead webhook events read per query of `inboxd webhooks dead`: the listing streams page by
/// page, so memory stays bounded however many there are.
const DEAD_WEBHOOKS_PAGE: i64 = 500;

/// Prints the dead letters of `app`, one line each (endpoints redacted: their paths are secrets).
async fn list_dead_webhooks(store: &Store, app: &str) -> anyhow::Result<()> {
    let mut after: Option<String> = None;
    loop {
        let page = store.dead_webhooks(app, after.as_deref(), DEAD_WEBHOOKS_PAGE).await?;
        let mut out = std::io::stdout().lock();
        for e in &page {
            let (endpoint, error) = (redact(&e.endpoint), e.last_error.as_deref().unwrap_or_default());
            writeln!(out, "{}\t{endpoint}\t{}\tattempts={}\terror={error:?}", e.id, e.event_type, e.attempts)
                .context("writing the listing")?;
        }
        out.flush().context("writing the listing")?;
        match page.last() {
            Some(last) if page.len() as i64 == DEAD_WEBHOOKS_PAGE => after = Some(last.id.clone()),
            _ => return Ok(()),
        }
    }
}

fn selection(select: HeldSelectArgs, release: bool) -> (HeldArgs, Option<(Selection, bool)>) {
    let which = match select.message_id {
        Some(id) if !select.all => Selection::One(id),
        _ => Selection::All,
    };
    (select.held, Some((which, release)))
}

fn grants(names: &[String]) -> anyhow::Result<Vec<Grant>> {
    names.iter().map(|n| n.parse::<Grant>().map_err(anyhow::Error::msg)).collect()
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn stop_on_signal(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::MI_OPTION_PURGE_DELAY;

    #[test]
    fn the_purge_delay_option_is_the_one_mimalloc_sets_to_a_second() {
        // mimalloc 3's default purge delay (options.c); no other option defaults to 1000.
        // SAFETY: mi_option_get reads a setting.
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }, 1000);
    }
}
