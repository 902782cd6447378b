//! `slipway server`: settings from flags, environment and a TOML file (in that order of
//! precedence), then the control plane's `run`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use slipway_api::{Ready, ServerConfig};

use crate::cli::ServerArgs;

pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:7070";
pub const DEFAULT_ROUTER_LISTEN: &str = "127.0.0.1:7080";

/// The same settings as the flags, as read from `--config FILE`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    api_listen: Option<SocketAddr>,
    api_tls_listen: Option<SocketAddr>,
    router_listen: Option<SocketAddr>,
    tls_listen: Option<SocketAddr>,
    router_workers: Option<u16>,
    domain: Option<String>,
    stop_dynos_on_exit: Option<bool>,
    admin_email: Option<String>,
    dyno_stop_timeout: Option<u64>,
    dyno_boot_timeout: Option<u64>,
    dyno_metrics_interval: Option<u64>,
    reconcile_interval: Option<u64>,
    shutdown_timeout: Option<u64>,
    max_dynos_per_type: Option<u32>,
    header_read_timeout: Option<u64>,
    builds_dir: Option<PathBuf>,
    build_timeout: Option<u64>,
    build_memory_limit: Option<u64>,
    max_slug_size: Option<u64>,
    release_phase_timeout: Option<u64>,
    dynos_dir: Option<PathBuf>,
    dyno_runtime: Option<String>,
    oci_runtime: Option<String>,
}

/// `$XDG_DATA_HOME/slipway`, else `~/.local/share/slipway`, else `./.slipway-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("slipway");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/slipway"),
        None => PathBuf::from(".slipway-data"),
    }
}

fn load_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

fn resolve(args: ServerArgs) -> anyhow::Result<ServerConfig> {
    let file = match &args.config {
        Some(path) => load_file(path)?,
        None => FileConfig::default(),
    };
    let parse_default = |s: &str| s.parse::<SocketAddr>().context("built-in default address");
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(default_data_dir);
    let data_dir = if data_dir.is_absolute() {
        data_dir
    } else {
        std::env::current_dir()
            .context("reading the current directory")?
            .join(data_dir)
    };
    let hook_binary = std::env::current_exe().context("finding the slipway binary")?;
    let dyno_runtime = args
        .dyno_runtime
        .or(file.dyno_runtime)
        .unwrap_or_else(|| "auto".into());
    let dyno_runtime =
        slipway_api::server::RuntimeKind::parse(&dyno_runtime).with_context(|| {
            format!("invalid dyno runtime {dyno_runtime:?}: use auto, oci or process")
        })?;
    Ok(ServerConfig {
        data_dir,
        api_listen: match args.api_listen.or(file.api_listen) {
            Some(a) => a,
            None => parse_default(DEFAULT_API_LISTEN)?,
        },
        api_tls_listen: args.api_tls_listen.or(file.api_tls_listen),
        router_listen: match args.router_listen.or(file.router_listen) {
            Some(a) => a,
            None => parse_default(DEFAULT_ROUTER_LISTEN)?,
        },
        tls_listen: args.tls_listen.or(file.tls_listen),
        router_workers: match args.router_workers.or(file.router_workers) {
            Some(0) => anyhow::bail!("router_workers in the config file must be at least 1"),
            Some(n) => usize::from(n),
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        },
        domain: args
            .domain
            .or(file.domain)
            .unwrap_or_else(|| "localhost".into()),
        stop_dynos_on_exit: args
            .stop_dynos_on_exit
            .or(file.stop_dynos_on_exit)
            .unwrap_or(false),
        admin_email: args
            .admin_email
            .or(file.admin_email)
            .unwrap_or_else(|| "admin@localhost".into()),
        dyno_stop_timeout: Duration::from_secs(
            args.dyno_stop_timeout
                .or(file.dyno_stop_timeout)
                .unwrap_or(30),
        ),
        dyno_boot_timeout: Duration::from_secs(
            args.dyno_boot_timeout
                .or(file.dyno_boot_timeout)
                .unwrap_or(60)
                .max(1),
        ),
        dyno_metrics_interval: Duration::from_secs(
            args.dyno_metrics_interval
                .or(file.dyno_metrics_interval)
                .unwrap_or(20)
                .max(1),
        ),
        reconcile_interval: args
            .reconcile_interval
            .or(file.reconcile_interval)
            .map_or(slipway_api::reconcile::DEFAULT_INTERVAL, |s| {
                Duration::from_secs(s.max(1))
            }),
        shutdown_timeout: Duration::from_secs(
            args.shutdown_timeout
                .or(file.shutdown_timeout)
                .unwrap_or(10),
        ),
        builds_dir: args.builds_dir.or(file.builds_dir),
        max_slug_bytes: args
            .max_slug_size
            .or(file.max_slug_size)
            .unwrap_or(500)
            .saturating_mul(1024 * 1024),
        build_memory_limit_bytes: args
            .build_memory_limit
            .or(file.build_memory_limit)
            .unwrap_or(4096)
            .saturating_mul(1024 * 1024),
        build_timeout: Duration::from_secs(
            args.build_timeout.or(file.build_timeout).unwrap_or(15 * 60),
        ),
        release_phase_timeout: Duration::from_secs(
            args.release_phase_timeout
                .or(file.release_phase_timeout)
                .unwrap_or(3600),
        ),
        header_read_timeout: Duration::from_secs(
            args.header_read_timeout
                .or(file.header_read_timeout)
                .unwrap_or(30),
        ),
        max_dynos_per_type: args
            .max_dynos_per_type
            .or(file.max_dynos_per_type)
            .unwrap_or(100),
        max_push_bytes: 1024 * 1024 * 1024,
        hook_binary,
        dynos_dir: args.dynos_dir.or(file.dynos_dir),
        dyno_runtime,
        oci_runtime: args
            .oci_runtime
            .or(file.oci_runtime)
            .unwrap_or_else(|| "runc".into()),
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the server runs until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLIPWAY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cfg = resolve(args)?;
    let data_dir = cfg.data_dir.clone();
    let domain = cfg.domain.clone();
    slipway_api::run(cfg, shutdown_signal(), |ready: &Ready| {
        println!("slipway API listening on http://{}", ready.api_addr);
        if let Some(tls) = ready.api_tls_addr {
            println!(
                "slipway API listening on https://{tls} (git too; the server's own certificates from certs:add)"
            );
        }
        println!(
            "slipway router listening on http://{} (apps at http://APP.{domain}:{}/)",
            ready.router_addr,
            ready.router_addr.port()
        );
        if let Some(tls) = ready.tls_addr {
            println!(
                "slipway router listening on https://{tls} (apps and their custom domains with a certificate from certs:add)"
            );
        }
        println!("data directory: {}", data_dir.display());
        println!("dyno runtime: {}", ready.dyno_runtime);
        if ready.admin_token_created {
            println!(
                "created the admin API token in {} (mode 0600); clients on this machine use it automatically",
                ready.admin_token_path.display()
            );
        }
        println!("ready");
    })
    .await?;
    println!("slipway stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_or_unreadable_interval_or_worker_count_is_refused_naming_the_flag() {
        use clap::Parser;
        for (flag, value) in [
            ("--reconcile-interval", "0"),
            ("--reconcile-interval", "soon"),
            ("--router-workers", "0"),
        ] {
            let err = crate::cli::Cli::try_parse_from(["slipway", "server", flag, value])
                .expect_err("refused");
            let said = err.to_string();
            assert!(said.contains(flag) && said.contains(value), "{said}");
        }
    }

    fn args() -> ServerArgs {
        ServerArgs {
            config: None,
            data_dir: None,
            api_listen: None,
            api_tls_listen: None,
            router_listen: None,
            tls_listen: None,
            router_workers: None,
            domain: None,
            stop_dynos_on_exit: None,
            admin_email: None,
            dyno_stop_timeout: None,
            dyno_boot_timeout: None,
            dyno_metrics_interval: None,
            reconcile_interval: None,
            shutdown_timeout: None,
            max_dynos_per_type: None,
            header_read_timeout: None,
            builds_dir: None,
            build_timeout: None,
            build_memory_limit: None,
            max_slug_size: None,
            release_phase_timeout: None,
            dynos_dir: None,
            dyno_runtime: None,
            oci_runtime: None,
        }
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("slipway.toml");
        std::fs::write(
            &file,
            "data_dir = \"/srv/slipway\"\napi_listen = \"127.0.0.1:9000\"\ndomain = \"apps.example.com\"\nstop_dynos_on_exit = false\n",
        )
        .expect("write");
        let mut a = args();
        a.config = Some(file);
        a.api_listen = Some("127.0.0.1:0".parse().expect("addr"));
        let cfg = resolve(a).expect("resolve");
        assert_eq!(cfg.data_dir, PathBuf::from("/srv/slipway"));
        assert_eq!(cfg.api_listen.port(), 0);
        assert_eq!(
            cfg.router_listen,
            DEFAULT_ROUTER_LISTEN.parse().expect("addr")
        );
        assert_eq!(cfg.domain, "apps.example.com");
        assert!(!cfg.stop_dynos_on_exit);
        assert_eq!(cfg.dyno_stop_timeout, Duration::from_secs(30));
        assert_eq!(cfg.reconcile_interval, Duration::from_secs(15));
    }

    #[test]
    fn unknown_or_malformed_settings_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "api_listen = \"nowhere\"\n").expect("write");
        let mut a = args();
        a.config = Some(file.clone());
        let err = format!("{:#}", resolve(a).expect_err("bad address"));
        assert!(err.contains("bad.toml"), "{err}");
        std::fs::write(&file, "colour = \"blue\"\n").expect("write");
        let mut a = args();
        a.config = Some(file);
        let err = format!("{:#}", resolve(a).expect_err("unknown key"));
        assert!(err.contains("colour"), "{err}");
    }
}
