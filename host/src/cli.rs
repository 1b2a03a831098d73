//! Command-line interface: the subcommands, and the flags that locate or override the config
//! or name a plugin file. Everything else lives in the config file and environment.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "inboxd", version, about = "The chat21 inbox observer for RabbitMQ, with Wasm policy plugins")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: consume outgoing chat traffic and deliver it to inboxes.
    Run(RunArgs),
    /// Tools for plugin authors; no broker needed.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Messages a policy held for a moderator (uses the broker from the config, as `run` does).
    #[command(subcommand)]
    Held(HeldCommand),
    /// Webhook events that ran out of attempts: list them, or send them again.
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// Mint a user JWT with exactly the scopes of the inbox pattern (signed with `[auth]`).
    Token(TokenArgs),
    /// Read another system's data into the store (stop that system first).
    #[command(subcommand)]
    Import(ImportCommand),
    /// Exit 0 if a running daemon answers 200 on its HTTP endpoint (for container health checks).
    Healthcheck(HealthcheckArgs),
    /// The moderation console's accounts.
    #[command(subcommand)]
    Console(ConsoleCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConsoleCommand {
    /// Read a password from standard input (its first line) and print its Argon2id hash, for
    /// `password_hash` of a `[[console.accounts]]` entry.
    HashPassword,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The chat21 user id (the token's `sub`).
    #[arg(long)]
    pub user: String,
    /// The chat21 app id (default: `app.id` of the config).
    #[arg(long)]
    pub app: Option<String>,
    /// Lifetime in seconds (default: `auth.ttl_secs`); every token expires.
    #[arg(long)]
    pub ttl: Option<u64>,
    /// Which MQTT client ids the token allows (default: `auth.client_ids`).
    #[arg(long, value_enum)]
    pub client_ids: Option<ClientIdsArg>,
    /// Print the scopes instead of a token (what your auth server must issue).
    #[arg(long)]
    pub scopes: bool,
    /// TOML config file, as for `run`.
    #[arg(long, env = "INBOXD_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClientIdsArg {
    /// Any client id: chat21-compatible (random uuids), but a leaked client id lets another
    /// user take that session over.
    Any,
    /// Only `<user>.<anything>`: no cross-user session takeover.
    Prefix,
    /// Only the user id itself: one connection per user.
    Exact,
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The daemon's `http.address`.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub address: std::net::SocketAddr,
    /// The path to ask.
    #[arg(long, default_value = "/readyz")]
    pub path: String,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML config file; without one, defaults plus environment variables are used.
    #[arg(long, env = "INBOXD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format, `human` or `json` (overrides `log.format`).
    #[arg(long)]
    pub log_format: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Show the world, exports and imports of a plugin, and whether inboxd would load it.
    Check(CheckArgs),
    /// Run a plugin against a message file and print its verdict and timing.
    Test(TestArgs),
    /// Compile the component on stdin to native code on stdout (how the daemon compiles plugins).
    #[command(hide = true)]
    Precompile(PrecompileArgs),
}

#[derive(Debug, Args)]
pub struct PrecompileArgs {
    /// For an engine that meters fuel.
    #[arg(long)]
    pub fuel: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The plugin component (.wasm).
    pub file: PathBuf,
    /// Check as if these capabilities were granted (e.g. `stdio`).
    #[arg(long = "grant")]
    pub grants: Vec<String>,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The plugin component (.wasm).
    pub file: PathBuf,
    /// A chat21 message body (JSON object); `sender`, `recipient` and `app_id` in it are
    /// used as the routing key would set them (defaults: alice, bob, tilechat).
    #[arg(long)]
    pub message: PathBuf,
    /// The plugin's config as JSON, passed to `init`.
    #[arg(long, default_value = "{}")]
    pub config: String,
    /// Which export to call.
    #[arg(long, value_enum, default_value_t = HookArg::OnMessage)]
    pub hook: HookArg,
    /// The inbox for `on-deliver` (default: the recipient).
    #[arg(long)]
    pub inbox_of: Option<String>,
    /// Capabilities to grant (e.g. `stdio` to see the plugin's output).
    #[arg(long = "grant")]
    pub grants: Vec<String>,
    /// CPU-time deadline per call, in milliseconds (as `deadline_ms` in the chain).
    #[arg(long, default_value_t = 50)]
    pub deadline_ms: u64,
    /// Memory cap in MiB.
    #[arg(long, default_value_t = 32)]
    pub memory_mb: usize,
    /// Fuel budget per call (roughly, wasm instructions); none by default.
    #[arg(long)]
    pub fuel: Option<u64>,
    /// Also time this many warm calls and print the average.
    #[arg(long, default_value_t = 1000)]
    pub repeat: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HookArg {
    OnMessage,
    OnDeliver,
}

#[derive(Debug, Subcommand)]
pub enum HeldCommand {
    /// List held messages (they stay held).
    List(HeldArgs),
    /// Deliver held messages as if accepted (`on-deliver` still applies per inbox).
    Release(HeldSelectArgs),
    /// Delete held messages.
    Discard(HeldSelectArgs),
}

#[derive(Debug, Args)]
pub struct HeldArgs {
    /// TOML config file, as for `run`.
    #[arg(long, env = "INBOXD_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct HeldSelectArgs {
    /// The message id to act on.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub message_id: Option<String>,
    /// Act on every held message.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub held: HeldArgs,
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// List dead-lettered webhook events (id, endpoint with its path redacted, event, attempts,
    /// last error), page by page.
    Dead(HeldArgs),
    /// Put dead-lettered events back in the outbox with fresh attempts; a running inboxd sends them.
    Replay(WebhookReplayArgs),
}

#[derive(Debug, Args)]
pub struct WebhookReplayArgs {
    /// The event id (first column of `inboxd webhooks dead`).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub id: Option<String>,
    /// Replay every dead-lettered event.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub config: HeldArgs,
}

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// chat21's MongoDB collections as `mongoexport` wrote them (Extended JSON, one document per
    /// line or `--jsonArray`); idempotent: running it again changes nothing.
    Chat21(ImportChat21Args),
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("collections").required(true).multiple(true).args(["groups", "conversations", "messages"])))]
pub struct ImportChat21Args {
    /// The export of chat21's `groups` collection.
    #[arg(long)]
    pub groups: Option<PathBuf>,
    /// The export of chat21's `conversations` collection.
    #[arg(long)]
    pub conversations: Option<PathBuf>,
    /// The export of chat21's `messages` collection.
    #[arg(long)]
    pub messages: Option<PathBuf>,
    /// The chat21 app whose documents are imported (default: `app.id` of the config); other
    /// apps' documents are counted and skipped.
    #[arg(long)]
    pub app: Option<String>,
    /// TOML config file, as for `run` (the store is its `store.url`).
    #[arg(long, env = "INBOXD_CONFIG")]
    pub config: Option<PathBuf>,
}
