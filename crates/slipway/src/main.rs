//! `slipway`: the platform (`slipway server`) and its command-line client in one binary.

mod cli;
mod client;
mod commands;
mod hook;
mod server_cmd;

use clap::Parser;

/// mimalloc instead of glibc malloc: the router allocates per request on several threads, and
/// glibc's arena locks showed up in its profile (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = cli::Cli::parse();
    if let cli::Command::DynoMonitor { dir } = &cli.command {
        // Runs outside any async runtime: it only waits for one process and copies its output.
        std::process::exit(slipway_runtime::monitor::main(dir));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            cli::Command::Server(args) => server_cmd::run(*args).await.map(|_| 0),
            cli::Command::Hook(cli::HookCommand::PreReceive) => hook::pre_receive().await,
            cli::Command::Hook(cli::HookCommand::PostReceive) => hook::post_receive().await,
            cli::Command::Run(args) => commands::run_attached(cli.global, args).await,
            other => commands::run(cli.global, other).await.map(|_| 0),
        }
    });
    match code {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            if let Some(hint) = client::hint_for(&e) {
                eprintln!("hint: {hint}");
            }
            std::process::exit(1);
        }
    }
}
