//! Command-line definitions. Command names follow the Heroku CLI (`apps:create`, `ps:scale`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "slipway",
    version,
    about = "A self-hosted platform as a service: git push, and it runs."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// API to talk to [default: the local server's, from <data-dir>/server.json]
    #[arg(long, global = true, env = "SLIPWAY_API_URL")]
    pub api_url: Option<String>,
    /// API token [default: <data-dir>/admin.token when readable]
    #[arg(long, global = true, env = "SLIPWAY_API_TOKEN", hide_env_values = true)]
    pub token: Option<slipway_core::Secret>,
    /// The local server's data directory, used to find its API and token
    #[arg(long, global = true, env = "SLIPWAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct AppArg {
    /// App to act on [default: from the `slipway` git remote]
    #[arg(short, long, env = "SLIPWAY_APP")]
    pub app: Option<String>,
}

/// Client commands are named and grouped as the Heroku CLI's are; each group's code is in
/// `commands/<group>.rs` (apps, config, releases, ps, builds, logs, maintenance, git).
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the platform: API, git endpoint, router and dynos
    Server(Box<ServerArgs>),

    // ---- apps (commands/apps.rs) ----
    /// List apps
    Apps,
    /// Create an app
    #[command(name = "apps:create")]
    AppsCreate {
        /// App name: 3-30 lowercase letters, digits and dashes [default: generated]
        name: Option<String>,
        /// Inside a git repository, do not add the `slipway` remote
        #[arg(long)]
        no_remote: bool,
    },
    /// Show an app
    #[command(name = "apps:info")]
    AppsInfo {
        #[command(flatten)]
        app: AppArg,
        /// App name (same as --app)
        name: Option<String>,
    },
    /// Rename an app; its URL and git remote follow (the `slipway` remote here is updated)
    #[command(name = "apps:rename")]
    AppsRename {
        #[command(flatten)]
        app: AppArg,
        /// The new name
        newname: String,
    },
    /// Destroy an app: its dynos, releases, slugs, repository and logs, for good
    #[command(name = "apps:destroy")]
    AppsDestroy {
        #[command(flatten)]
        app: AppArg,
        /// Repeat the app's name to confirm
        #[arg(long)]
        confirm: Option<String>,
    },

    // ---- config vars (commands/config.rs) ----
    /// Show an app's config vars
    Config {
        #[command(flatten)]
        app: AppArg,
        /// As shell assignments (KEY='value'), ready for `eval` or a .env file
        #[arg(short, long, conflicts_with = "json")]
        shell: bool,
        /// As a JSON object
        #[arg(long)]
        json: bool,
    },
    /// Print one config var's value
    #[command(name = "config:get")]
    ConfigGet {
        #[command(flatten)]
        app: AppArg,
        /// The config var's name
        key: String,
        /// As a shell assignment (KEY='value')
        #[arg(short, long)]
        shell: bool,
    },
    /// Set config vars (one release) and restart the dynos onto them: A=1 B=2
    #[command(name = "config:set")]
    ConfigSet {
        #[command(flatten)]
        app: AppArg,
        /// KEY=VALUE pairs; the value is everything after the first `=`
        #[arg(required = true, value_name = "KEY=VALUE")]
        pairs: Vec<String>,
    },
    /// Remove config vars (one release) and restart the dynos: A B
    #[command(name = "config:unset")]
    ConfigUnset {
        #[command(flatten)]
        app: AppArg,
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },

    // ---- releases (commands/releases.rs) ----
    /// List an app's releases, newest first
    Releases {
        #[command(flatten)]
        app: AppArg,
        /// How many releases to show
        #[arg(short, long, default_value_t = 15)]
        num: usize,
        /// As JSON
        #[arg(long)]
        json: bool,
    },
    /// Show a release (the current one by default) and the config var names it carried
    #[command(name = "releases:info")]
    ReleasesInfo {
        #[command(flatten)]
        app: AppArg,
        /// Release version (v3 or 3) or id
        release: Option<String>,
        /// As JSON
        #[arg(long)]
        json: bool,
    },
    /// Show what a release's release phase printed
    #[command(name = "releases:output")]
    ReleasesOutput {
        #[command(flatten)]
        app: AppArg,
        /// Release version (v3 or 3) or id
        release: String,
    },
    /// Roll back to a release's code and config (the previous release by default)
    Rollback {
        #[command(flatten)]
        app: AppArg,
        /// Release version (v3 or 3) or id
        release: Option<String>,
    },

    // ---- one-off dynos (commands/run.rs) ----
    /// Run a command in a one-off dyno with the app's current release and config, attached to
    /// this terminal (a real pty when stdin is one, pipes otherwise); exits with its status
    Run(RunArgs),
    /// Run a command in a one-off dyno in the background; its output goes to the logs as run.N
    #[command(name = "run:detached")]
    RunDetached(RunArgs),

    // ---- formation and dynos (commands/ps.rs) ----
    /// List an app's dynos: type, number, command, state, since
    Ps {
        #[command(flatten)]
        app: AppArg,
        /// As JSON
        #[arg(long)]
        json: bool,
    },
    /// Scale process types: web=2 worker+1 web=2:standard-2X
    #[command(name = "ps:scale")]
    PsScale {
        #[command(flatten)]
        app: AppArg,
        /// TYPE=N, TYPE+N or TYPE-N, optionally :SIZE
        #[arg(required = true)]
        changes: Vec<String>,
    },
    /// Change dyno sizes: web=standard-2X (standard-1X, standard-2X, performance-M)
    #[command(name = "ps:type", alias = "ps:resize")]
    PsType {
        #[command(flatten)]
        app: AppArg,
        /// TYPE=SIZE
        #[arg(required = true)]
        changes: Vec<String>,
    },
    /// Restart dynos: all, a type (web) or one dyno (web.1)
    #[command(name = "ps:restart")]
    PsRestart {
        #[command(flatten)]
        app: AppArg,
        /// A process type or dyno name [default: every dyno]
        target: Option<String>,
    },
    /// Stop a dyno (a formation dyno is started again, as on Heroku)
    #[command(name = "ps:stop")]
    PsStop {
        #[command(flatten)]
        app: AppArg,
        /// A dyno name (web.1) or process type
        target: String,
    },

    // ---- builds (commands/builds.rs) ----
    /// List an app's builds, or a pipeline's (--pipeline)
    Builds {
        #[command(flatten)]
        app: AppArg,
        /// List this pipeline's builds (branch, commit, message, status, durations)
        #[arg(short, long)]
        pipeline: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show a pipeline build: branch, commit, message, status, durations, deploys
    #[command(name = "builds:info")]
    BuildsInfo {
        /// The build's number (with --pipeline) or id
        build: String,
        #[arg(short, long)]
        pipeline: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Print a pipeline build's output (build and tests)
    #[command(name = "builds:output")]
    BuildsOutput {
        /// The build's number (with --pipeline) or id
        build: String,
        #[arg(short, long)]
        pipeline: Option<String>,
    },

    /// Empty an app's build cache: the next build installs every dependency again
    #[command(name = "builds:cache:purge")]
    BuildsCachePurge {
        #[command(flatten)]
        app: AppArg,
        /// The app's name, to confirm
        #[arg(long)]
        confirm: Option<String>,
    },

    // ---- buildpacks (commands/buildpacks.rs) ----
    /// List the buildpacks an app's builds run
    Buildpacks {
        #[command(flatten)]
        app: AppArg,
    },
    /// Set the app's buildpack (or the one at --index)
    #[command(name = "buildpacks:set")]
    BuildpacksSet {
        #[command(flatten)]
        app: AppArg,
        /// A built-in (heroku/python), a directory on the server, or a git URL with #ref
        url: String,
        /// 1-based position to replace
        #[arg(short, long)]
        index: Option<usize>,
    },
    /// Add a buildpack (last, or at --index)
    #[command(name = "buildpacks:add")]
    BuildpacksAdd {
        #[command(flatten)]
        app: AppArg,
        url: String,
        /// 1-based position to insert at
        #[arg(short, long)]
        index: Option<usize>,
    },
    /// Remove a buildpack, by URL or --index
    #[command(name = "buildpacks:remove")]
    BuildpacksRemove {
        #[command(flatten)]
        app: AppArg,
        url: Option<String>,
        /// 1-based position to remove
        #[arg(short, long)]
        index: Option<usize>,
    },
    /// Remove every buildpack: builds detect the buildpack to use again
    #[command(name = "buildpacks:clear")]
    BuildpacksClear {
        #[command(flatten)]
        app: AppArg,
    },

    // ---- maintenance (commands/apps.rs) ----
    /// Turn maintenance mode on (the router answers H80)
    #[command(name = "maintenance:on")]
    MaintenanceOn {
        #[command(flatten)]
        app: AppArg,
    },
    /// Turn maintenance mode off
    #[command(name = "maintenance:off")]
    MaintenanceOff {
        #[command(flatten)]
        app: AppArg,
    },

    // ---- labs (commands/config.rs: each feature is a config var) ----
    /// List an app's experimental features and whether they are on
    Labs {
        #[command(flatten)]
        app: AppArg,
    },
    /// Turn a feature on (log-runtime-metrics: memory and load lines in the logs); restarts
    /// the dynos
    #[command(name = "labs:enable")]
    LabsEnable {
        #[command(flatten)]
        app: AppArg,
        feature: String,
    },
    /// Turn a feature off; restarts the dynos
    #[command(name = "labs:disable")]
    LabsDisable {
        #[command(flatten)]
        app: AppArg,
        feature: String,
    },

    // ---- logs (commands/logs.rs, commands/drains.rs) ----
    /// Show an app's logs
    Logs {
        #[command(flatten)]
        app: AppArg,
        /// Lines of history (at most what the app keeps: 1500 unless its log settings say more)
        #[arg(short, long, default_value_t = 100)]
        num: usize,
        /// Keep streaming new lines
        #[arg(short, long)]
        tail: bool,
        /// Only this dyno (web.1) or process type (web), or router
        #[arg(short, long, alias = "ps")]
        dyno: Option<String>,
        /// Only app or heroku lines
        #[arg(short, long)]
        source: Option<String>,
        /// One JSON object per line: seq, time, source, dyno, message
        #[arg(long)]
        json: bool,
    },
    /// List the app's log drains
    Drains {
        #[command(flatten)]
        app: AppArg,
        #[arg(long)]
        json: bool,
    },
    /// Send the app's logs to a drain: syslog://host:port, syslog+tls://host:port, https://...
    #[command(name = "drains:add")]
    DrainsAdd {
        #[command(flatten)]
        app: AppArg,
        url: String,
    },
    /// Stop sending the app's logs to a drain (its URL or id)
    #[command(name = "drains:remove")]
    DrainsRemove {
        #[command(flatten)]
        app: AppArg,
        url_or_id: String,
    },

    // ---- custom domains and certificates (commands/domains.rs, commands/certs.rs) ----
    /// List the app's domains: its own <app>.<domain> and custom ones
    Domains {
        #[command(flatten)]
        app: AppArg,
        #[arg(long)]
        json: bool,
    },
    /// Serve the app at a custom domain too (www.example.com, or *.example.com for one label)
    #[command(name = "domains:add")]
    DomainsAdd {
        #[command(flatten)]
        app: AppArg,
        hostname: String,
    },
    /// Stop serving the app at a custom domain
    #[command(name = "domains:remove")]
    DomainsRemove {
        #[command(flatten)]
        app: AppArg,
        hostname: String,
    },
    /// Redirect the app's plain-HTTP requests to HTTPS (301; 308 keeps POST bodies): on or off
    #[command(name = "domains:redirect-https")]
    DomainsRedirectHttps {
        #[command(flatten)]
        app: AppArg,
        #[arg(value_parser = ["on", "off"])]
        switch: String,
    },
    /// List TLS certificates: the app's with --app, else the server's own
    Certs {
        #[command(flatten)]
        app: AppArg,
        #[arg(long)]
        json: bool,
    },
    /// Add a TLS certificate (PEM chain and key files), served by SNI for the names it covers
    #[command(name = "certs:add")]
    CertsAdd {
        #[command(flatten)]
        app: AppArg,
        /// PEM certificate chain, the server's certificate first
        cert: PathBuf,
        /// PEM private key of that certificate
        key: PathBuf,
    },
    /// Show a certificate: domains, issuer, validity [default: the only one]
    #[command(name = "certs:info")]
    CertsInfo {
        #[command(flatten)]
        app: AppArg,
        name: Option<String>,
    },
    /// Remove a certificate; its names get no TLS handshake unless another covers them
    #[command(name = "certs:remove")]
    CertsRemove {
        #[command(flatten)]
        app: AppArg,
        name: Option<String>,
    },

    // ---- deploys, webhooks, deploy secrets (commands/deploys.rs) ----
    /// List an app's deploys (each push's, and those started with deploys:start)
    Deploys {
        #[command(flatten)]
        app: AppArg,
        #[arg(long)]
        json: bool,
    },
    /// Show a deploy: its steps, their status, duration and output
    #[command(name = "deploys:info")]
    DeploysInfo {
        #[command(flatten)]
        app: AppArg,
        /// Deploy number or id
        deploy: String,
        #[arg(long)]
        json: bool,
    },
    /// Follow a deploy live; exits 1 unless it passed (failed, rolled back, cancelled)
    #[command(name = "deploys:wait")]
    DeploysWait {
        #[command(flatten)]
        app: AppArg,
        /// Deploy number or id
        deploy: String,
    },
    /// Cancel a queued or running deploy (a release already live stays live)
    #[command(name = "deploys:cancel")]
    DeploysCancel {
        #[command(flatten)]
        app: AppArg,
        /// Deploy number or id
        deploy: String,
    },
    /// Deploy a release again (its slug and config) through every deploy step, and follow it
    #[command(name = "deploys:start")]
    DeploysStart {
        #[command(flatten)]
        app: AppArg,
        /// Release to deploy: v3
        #[arg(long)]
        release: String,
        /// Keep the release live if a check fails after it went live
        #[arg(long)]
        no_rollback: bool,
        /// Watch window in seconds (overrides app.json's slipway.watch)
        #[arg(long)]
        watch: Option<u64>,
    },
    /// List the names of the app's deploy secrets (values are never shown)
    #[command(name = "deploys:secrets")]
    DeploysSecrets {
        #[command(flatten)]
        app: AppArg,
    },
    /// Set deploy secrets: environment for pre/post-deploy and smoke commands, masked in all output
    #[command(name = "deploys:secrets:set")]
    DeploysSecretsSet {
        #[command(flatten)]
        app: AppArg,
        /// KEY=VALUE pairs
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Remove deploy secrets
    #[command(name = "deploys:secrets:unset")]
    DeploysSecretsUnset {
        #[command(flatten)]
        app: AppArg,
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// List the URLs deploy reports are POSTed to
    Webhooks {
        #[command(flatten)]
        app: AppArg,
    },
    /// POST each deploy's report (JSON) to an http:// URL
    #[command(name = "webhooks:add")]
    WebhooksAdd {
        #[command(flatten)]
        app: AppArg,
        url: String,
    },
    /// Stop sending deploy reports to a URL (its URL or id)
    #[command(name = "webhooks:remove")]
    WebhooksRemove {
        #[command(flatten)]
        app: AppArg,
        url_or_id: String,
    },

    // ---- release store and host targets (commands/hosts.rs) ----
    /// List the releases kept in the release store
    Store {
        /// Only this release name (an app's name for built slugs)
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Import a tarball into the release store
    #[command(name = "store:import")]
    StoreImport {
        /// The tarball (.tgz)
        file: std::path::PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        tag: String,
        /// The source commit it was built from
        #[arg(long)]
        commit: Option<String>,
        /// Free-form metadata, a JSON object
        #[arg(long)]
        metadata: Option<String>,
    },
    /// Show one release of the store
    #[command(name = "store:info")]
    StoreInfo { name: String, tag: String },
    /// Delete one release from the store (refused while a target's host runs it)
    #[command(name = "store:delete")]
    StoreDelete { name: String, tag: String },
    /// Delete all but the newest K releases of a name (never the latest or one a host runs)
    #[command(name = "store:prune")]
    StorePrune {
        #[arg(long)]
        name: String,
        #[arg(long)]
        keep: usize,
    },
    // ---- pipelines (commands/pipelines.rs) ----
    /// List pipelines
    Pipelines {
        #[arg(long)]
        json: bool,
    },
    /// Create a pipeline (inside a git repository, add its remote too)
    #[command(name = "pipelines:create")]
    PipelinesCreate {
        /// 1-30 lowercase letters, digits and dashes
        name: String,
        /// The git remote to add for it
        #[arg(short, long, default_value = "pipeline")]
        remote: String,
        /// Do not add a git remote
        #[arg(long)]
        no_remote: bool,
    },
    /// Show a pipeline: its git remote, stages, strategies, targets and what each runs
    #[command(name = "pipelines:info")]
    PipelinesInfo {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Destroy a pipeline: its stages, builds and repository (not its target apps)
    #[command(name = "pipelines:destroy")]
    PipelinesDestroy {
        name: String,
        /// Repeat the pipeline's name to confirm
        #[arg(long)]
        confirm: Option<String>,
    },
    /// Add a pipeline's git remote to the repository here
    #[command(name = "pipelines:git:remote")]
    PipelinesGitRemote {
        name: String,
        #[arg(short, long, default_value = "pipeline")]
        remote: String,
    },
    /// Add a stage (at the end, or after another)
    #[command(name = "pipelines:stages:add")]
    PipelinesStagesAdd {
        pipeline: String,
        stage: String,
        /// Put it right after this stage
        #[arg(long)]
        after: Option<String>,
        /// Every passed build of this branch deploys to the stage
        #[arg(long, value_name = "BRANCH", conflicts_with = "manual")]
        automatic: Option<String>,
        /// Only explicit deploys, promotions and `#stage` commit messages (the default)
        #[arg(long)]
        manual: bool,
        /// The watch window after a deploy, in seconds
        #[arg(long, value_name = "SECONDS")]
        watch: Option<i64>,
    },
    /// Change a stage's strategy
    #[command(name = "pipelines:stages:update")]
    PipelinesStagesUpdate {
        pipeline: String,
        stage: String,
        #[arg(
            long,
            value_name = "BRANCH",
            conflicts_with = "manual",
            required_unless_present = "manual"
        )]
        automatic: Option<String>,
        #[arg(long)]
        manual: bool,
    },
    /// Remove a stage
    #[command(name = "pipelines:stages:remove")]
    PipelinesStagesRemove { pipeline: String, stage: String },
    /// Make an app (APP) or a host target (host:NAME, see targets:add) a target of a stage
    #[command(name = "pipelines:targets:add")]
    PipelinesTargetsAdd {
        pipeline: String,
        stage: String,
        /// APP, or host:NAME for a host target
        app: String,
    },
    /// Remove an app (APP) or a host target (host:NAME) from a stage's targets
    #[command(name = "pipelines:targets:remove")]
    PipelinesTargetsRemove {
        pipeline: String,
        stage: String,
        /// APP, or host:NAME for a host target
        app: String,
    },
    /// List a stage's environment variables (values are secret and never shown)
    #[command(name = "pipelines:env")]
    PipelinesEnv { pipeline: String, stage: String },
    /// Set a stage's environment variables (secrets, given to its deploys): K=V ...
    #[command(name = "pipelines:env:set")]
    PipelinesEnvSet {
        pipeline: String,
        stage: String,
        #[arg(required = true, value_name = "KEY=VALUE")]
        pairs: Vec<slipway_core::Secret>,
    },
    /// Remove a stage's environment variables: K ...
    #[command(name = "pipelines:env:unset")]
    PipelinesEnvUnset {
        pipeline: String,
        stage: String,
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Deploy a passed build to a stage now; exits non-zero when the deploy failed
    #[command(name = "pipelines:deploy")]
    PipelinesDeploy {
        /// The build's number (with --pipeline) or id
        build: String,
        /// The stage to deploy to
        #[arg(long)]
        to: String,
        #[arg(short, long)]
        pipeline: Option<String>,
    },
    /// Deploy the slug a stage runs to the next stage, without rebuilding
    #[command(name = "pipelines:promote")]
    PipelinesPromote {
        pipeline: String,
        #[arg(long)]
        from: String,
    },
    /// List a pipeline's deploys
    #[command(name = "pipelines:deploys")]
    PipelinesDeploys {
        pipeline: String,
        #[arg(long)]
        json: bool,
    },

    /// List the host targets
    Targets {
        #[arg(long)]
        json: bool,
    },
    /// Add a target: a set of SSH hosts deployed to as one
    #[command(name = "targets:add")]
    TargetsAdd {
        name: String,
        /// user@host[:port], comma-separated
        #[arg(long, value_delimiter = ',', required = true)]
        hosts: Vec<String>,
        /// The deploy directory on each host (absolute, or relative to the login's home)
        #[arg(long)]
        path: String,
        /// Private key file on the server
        #[arg(long)]
        key: Option<String>,
        /// Command run on the host in <path>/current after each switch
        #[arg(long)]
        restart: Option<String>,
        /// http(s)://URL fetched on the host, or a command run there
        #[arg(long)]
        health: Option<String>,
        #[arg(long, default_value_t = 10)]
        health_attempts: u32,
        /// Seconds between attempts
        #[arg(long, default_value_t = 1)]
        health_interval: u32,
        /// Seconds one attempt may take
        #[arg(long, default_value_t = 5)]
        health_timeout: u32,
        /// Command run in the new release's directory before the switch
        #[arg(long)]
        pre_switch: Option<String>,
        /// Directories under <path>/shared linked into each release
        #[arg(long, num_args = 1..)]
        shared: Vec<String>,
        /// Hosts switched at a time
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// http(s)://URL where the target serves, reached from the slipway server ($URL of a
        /// pipeline deploy's smoke commands; default: --health when it is a URL)
        #[arg(long)]
        url: Option<String>,
        /// KEY=VALUE written into each release (secret: never shown)
        #[arg(long, num_args = 1..)]
        env: Vec<String>,
        /// SHA256:... fingerprint of a host key you checked (once per host)
        #[arg(long)]
        accept_host_key: Vec<String>,
    },
    /// Show a target (its environment masked)
    #[command(name = "targets:info")]
    TargetsInfo { name: String },
    /// Remove a target from slipway (its hosts are left as they are)
    #[command(name = "targets:remove")]
    TargetsRemove {
        name: String,
        #[arg(long)]
        confirm: Option<String>,
    },
    /// Set variables of a target's environment (written into each release deployed after)
    #[command(name = "targets:env:set")]
    TargetsEnvSet {
        name: String,
        /// KEY=VALUE (secret: never shown)
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Remove variables from a target's environment
    #[command(name = "targets:env:unset")]
    TargetsEnvUnset {
        name: String,
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Trust a host's new key after checking it
    #[command(name = "targets:trust")]
    TargetsTrust {
        name: String,
        #[arg(long, required = true)]
        accept_host_key: Vec<String>,
    },
    /// Deploy a release from the store to a target
    #[command(name = "targets:deploy")]
    TargetsDeploy {
        name: String,
        store_name: String,
        tag: String,
        /// Seconds to wait for another operation's lock
        #[arg(long, default_value_t = 0)]
        lock_wait: u64,
        /// Seconds after which this deploy's lock counts as stale
        #[arg(long, default_value_t = 900)]
        lock_ttl: u64,
    },
    /// Switch every host back to a release they all have (default: the previous known-good)
    #[command(name = "targets:rollback")]
    TargetsRollback {
        name: String,
        tag: Option<String>,
        #[arg(long, default_value_t = 0)]
        lock_wait: u64,
    },
    /// The deploy runner's deploys to a target (pipeline stages): status, steps, what each host runs
    #[command(name = "targets:deploys")]
    TargetsDeploys {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Per host: the releases present, the current one, the lock
    #[command(name = "targets:releases")]
    TargetsReleases {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove old releases on every host (never current, previous known-good or pinned)
    #[command(name = "targets:prune")]
    TargetsPrune {
        name: String,
        #[arg(long)]
        keep: usize,
    },
    /// Keep a release on every host through prunes
    #[command(name = "targets:pin")]
    TargetsPin {
        name: String,
        tag: String,
        /// Unpin instead
        #[arg(long)]
        unpin: bool,
    },
    /// Run a command on each host (in current, with its env); exits non-zero if any failed
    #[command(name = "targets:exec")]
    TargetsExec {
        name: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Break the target's locks on every host, whoever holds them
    #[command(name = "targets:unlock")]
    TargetsUnlock { name: String },

    // ---- git (commands/git.rs) ----
    /// Add a git remote for an app, with this CLI as its credential helper
    #[command(name = "git:remote")]
    GitRemote {
        #[command(flatten)]
        app: AppArg,
        /// Name of the remote
        #[arg(short, long, default_value = "slipway")]
        remote: String,
    },
    /// git credential helper: answers git with the API token (set up by git:remote)
    #[command(name = "git:credential", hide = true)]
    GitCredential {
        /// get, store or erase
        operation: String,
    },

    /// Internal: run by git inside the server
    #[command(subcommand, hide = true)]
    Hook(HookCommand),

    /// Internal: the per-dyno monitor the server starts (holds the dyno's output and exit
    /// status so the dyno outlives the server)
    #[command(name = "dyno-monitor", hide = true)]
    DynoMonitor {
        /// The dyno's monitor directory
        dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum HookCommand {
    /// git's pre-receive hook: builds the pushed commit
    #[command(name = "pre-receive")]
    PreReceive,
    /// git's post-receive hook of a pipeline's repository: builds and tests what was pushed
    #[command(name = "post-receive")]
    PostReceive,
}

#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// TOML file with any of the settings below (flags and environment win over it)
    #[arg(long, env = "SLIPWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where state, repositories, slugs and dynos live [default: ~/.local/share/slipway]
    #[arg(long, env = "SLIPWAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// API and git address [default: 127.0.0.1:7070]; port 0 picks a free port
    #[arg(long, env = "SLIPWAY_API_LISTEN")]
    pub api_listen: Option<SocketAddr>,
    /// The API and git endpoints over HTTPS too (certificates from `certs:add` without an
    /// app, by SNI) [default: none]
    #[arg(long, env = "SLIPWAY_API_TLS_LISTEN")]
    pub api_tls_listen: Option<SocketAddr>,
    /// Router address [default: 127.0.0.1:7080]; port 0 picks a free port
    #[arg(long, env = "SLIPWAY_ROUTER_LISTEN")]
    pub router_listen: Option<SocketAddr>,
    /// The router's HTTPS address (certificates from `certs:add`, by SNI) [default: none]
    #[arg(long, env = "SLIPWAY_TLS_LISTEN")]
    pub tls_listen: Option<SocketAddr>,
    /// Router worker threads, each serving its own share of the router's connections
    /// [default: the number of CPU cores]
    #[arg(long, env = "SLIPWAY_ROUTER_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub router_workers: Option<u16>,
    /// Apps are served at <app>.<domain> [default: localhost]
    #[arg(long, env = "SLIPWAY_DOMAIN")]
    pub domain: Option<String>,
    /// Stop all dynos when the server stops [default: false: dynos keep running under their
    /// monitors and the next server re-adopts them]
    #[arg(long, env = "SLIPWAY_STOP_DYNOS_ON_EXIT")]
    pub stop_dynos_on_exit: Option<bool>,
    /// Email of the admin user created at first start [default: admin@localhost]
    #[arg(long, env = "SLIPWAY_ADMIN_EMAIL")]
    pub admin_email: Option<String>,
    /// Seconds between SIGTERM and SIGKILL when stopping a dyno [default: 30]
    #[arg(long, env = "SLIPWAY_DYNO_STOP_TIMEOUT")]
    pub dyno_stop_timeout: Option<u64>,
    /// Seconds a web dyno has to bind $PORT before it is killed (R10) [default: 60]
    #[arg(long, env = "SLIPWAY_DYNO_BOOT_TIMEOUT")]
    pub dyno_boot_timeout: Option<u64>,
    /// Seconds between samples of each dyno's memory and CPU (R14 checks, runtime metrics
    /// lines, `ps` figures) [default: 20, as Heroku]
    #[arg(long, env = "SLIPWAY_DYNO_METRICS_INTERVAL")]
    pub dyno_metrics_interval: Option<u64>,
    /// Seconds between reconciliation passes, which compare every app's dynos with its
    /// release and formation and correct drift (missing, extra, stale or lost dynos)
    /// [default: 15]
    #[arg(long, env = "SLIPWAY_RECONCILE_INTERVAL", value_parser = clap::value_parser!(u64).range(1..))]
    pub reconcile_interval: Option<u64>,
    /// Seconds open requests get to finish at shutdown [default: 10]
    #[arg(long, env = "SLIPWAY_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<u64>,
    /// Where builds run, outside the data directory [default: <data-dir>-builds]
    #[arg(long, env = "SLIPWAY_BUILDS_DIR")]
    pub builds_dir: Option<PathBuf>,
    /// Largest slug (MB, compressed) a build may make [default: 500, Heroku's cap]
    #[arg(long, env = "SLIPWAY_MAX_SLUG_SIZE")]
    pub max_slug_size: Option<u64>,
    /// Memory (MB) a build may use: with the OCI dyno runtime, each buildpack container's memory limit; otherwise each buildpack process's address space [default: 4096]
    #[arg(long, env = "SLIPWAY_BUILD_MEMORY_LIMIT")]
    pub build_memory_limit: Option<u64>,
    /// Seconds one build (all its buildpacks) may run [default: 900]
    #[arg(long, env = "SLIPWAY_BUILD_TIMEOUT")]
    pub build_timeout: Option<u64>,
    /// Seconds a release phase (the Procfile's `release:` command) may run [default: 3600]
    #[arg(long, env = "SLIPWAY_RELEASE_PHASE_TIMEOUT")]
    pub release_phase_timeout: Option<u64>,
    /// Seconds a client has to send a request's headers, on the API and the router [default: 30]
    #[arg(long, env = "SLIPWAY_HEADER_READ_TIMEOUT")]
    pub header_read_timeout: Option<u64>,
    /// Most dynos of one process type an app may scale to [default: 100]
    #[arg(long, env = "SLIPWAY_MAX_DYNOS_PER_TYPE")]
    pub max_dynos_per_type: Option<u32>,
    /// Where dynos run, outside the data directory [default: <data-dir>-dynos]
    #[arg(long, env = "SLIPWAY_DYNOS_DIR")]
    pub dynos_dir: Option<PathBuf>,
    /// How dynos run: oci (containers), process, or auto (oci when root and the OCI runtime works) [default: auto]
    #[arg(long, env = "SLIPWAY_DYNO_RUNTIME", value_parser = ["auto", "oci", "process"])]
    pub dyno_runtime: Option<String>,
    /// The OCI runtime: runc, crun, or a path [default: runc]
    #[arg(long, env = "SLIPWAY_OCI_RUNTIME")]
    pub oci_runtime: Option<String>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub app: AppArg,
    /// Dyno size: standard-1X, standard-2X, performance-M [default: standard-1X]
    #[arg(short, long)]
    pub size: Option<String>,
    /// Extra environment variable for the command, KEY=VALUE (repeatable)
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Seconds after which the dyno is stopped [default: 86400]
    #[arg(long, value_name = "SECS")]
    pub ttl: Option<u64>,
    /// Plain pipes even when this is a terminal
    #[arg(long)]
    pub no_tty: bool,
    /// The command: one argument is a shell line; several are quoted as needed
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}
