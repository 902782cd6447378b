//! Client commands. Data goes to stdout, progress and hints to stderr.
//!
//! One module per group of the Heroku CLI (and of the Platform API resources they call):
//! `apps` (apps:*, maintenance:*), `config` (config:*), `releases` (releases*, rollback),
//! `ps` (ps:*: formation and dynos), `builds`, `logs`, `git` (git:remote, the credential
//! helper).

mod apps;
mod buildpacks;
mod builds;
mod certs;
mod config;
mod deploys;
mod domains;
mod drains;
mod git;
mod hosts;
mod logs;
mod pipelines;
mod ps;
mod releases;
mod run;

use anyhow::bail;
use chrono::{DateTime, Local, Utc};
use serde_json::Value;

use crate::cli::{Command, Global};
use crate::client::{resolve_app, Client};

pub async fn run(global: Global, command: Command) -> anyhow::Result<()> {
    if let Command::GitCredential { operation } = &command {
        return git::git_credential(&global, operation);
    }
    let client = Client::from_global(&global)?;
    let c = &client;
    match command {
        Command::Apps => apps::list(c).await,
        Command::AppsCreate { name, no_remote } => apps::create(c, &global, name, no_remote).await,
        Command::AppsInfo { app, name } => apps::info(c, &resolve_app(app.app.or(name))?).await,
        Command::AppsRename { app, newname } => {
            apps::rename(c, &resolve_app(app.app)?, &newname).await
        }
        Command::AppsDestroy { app, confirm } => {
            apps::destroy(c, &resolve_app(app.app)?, confirm).await
        }
        Command::MaintenanceOn { app } => apps::maintenance(c, &resolve_app(app.app)?, true).await,
        Command::MaintenanceOff { app } => {
            apps::maintenance(c, &resolve_app(app.app)?, false).await
        }
        Command::Labs { app } => config::labs(c, &resolve_app(app.app)?).await,
        Command::LabsEnable { app, feature } => {
            config::labs_set(c, &resolve_app(app.app)?, &feature, true).await
        }
        Command::LabsDisable { app, feature } => {
            config::labs_set(c, &resolve_app(app.app)?, &feature, false).await
        }
        Command::Config { app, shell, json } => {
            config::show(c, &resolve_app(app.app)?, shell, json).await
        }
        Command::ConfigGet { app, key, shell } => {
            config::get(c, &resolve_app(app.app)?, &key, shell).await
        }
        Command::ConfigSet { app, pairs } => config::set(c, &resolve_app(app.app)?, &pairs).await,
        Command::ConfigUnset { app, keys } => config::unset(c, &resolve_app(app.app)?, &keys).await,
        Command::Releases { app, num, json } => {
            releases::list(c, &resolve_app(app.app)?, num, json).await
        }
        Command::ReleasesInfo { app, release, json } => {
            releases::info(c, &resolve_app(app.app)?, release, json).await
        }
        Command::ReleasesOutput { app, release } => {
            releases::output(c, &resolve_app(app.app)?, &release).await
        }
        Command::RunDetached(args) => {
            let app = resolve_app(args.app.app.clone())?;
            run::detached(c, &app, run_options(args)).await
        }
        Command::Rollback { app, release } => {
            releases::rollback(c, &resolve_app(app.app)?, release).await
        }
        Command::Ps { app, json } => ps::list(c, &resolve_app(app.app)?, json).await,
        Command::PsScale { app, changes } => ps::scale(c, &resolve_app(app.app)?, &changes).await,
        Command::PsType { app, changes } => ps::resize(c, &resolve_app(app.app)?, &changes).await,
        Command::PsRestart { app, target } => {
            ps::restart(c, &resolve_app(app.app)?, target.as_deref()).await
        }
        Command::PsStop { app, target } => ps::stop(c, &resolve_app(app.app)?, &target).await,
        Command::Builds {
            pipeline: Some(p),
            json,
            ..
        } => pipelines::builds(c, &p, json).await,
        Command::Builds { app, .. } => builds::list(c, &resolve_app(app.app)?).await,
        Command::BuildsInfo {
            build,
            pipeline,
            json,
        } => pipelines::build_info(c, &build, pipeline.as_deref(), json).await,
        Command::BuildsOutput { build, pipeline } => {
            pipelines::build_output(c, &build, pipeline.as_deref()).await
        }
        Command::Pipelines { json } => pipelines::list(c, json).await,
        Command::PipelinesCreate {
            name,
            remote,
            no_remote,
        } => pipelines::create(c, &global, &name, (!no_remote).then_some(remote.as_str())).await,
        Command::PipelinesInfo { name, json } => pipelines::info(c, &name, json).await,
        Command::PipelinesDestroy { name, confirm } => {
            pipelines::destroy(c, &name, confirm.as_deref()).await
        }
        Command::PipelinesGitRemote { name, remote } => {
            pipelines::git_remote(c, &global, &name, &remote, true).await
        }
        Command::PipelinesStagesAdd {
            pipeline,
            stage,
            after,
            automatic,
            manual: _,
            watch,
        } => pipelines::stages_add(c, &pipeline, &stage, after, automatic, watch).await,
        Command::PipelinesStagesUpdate {
            pipeline,
            stage,
            automatic,
            manual: _,
        } => pipelines::stages_update(c, &pipeline, &stage, automatic).await,
        Command::PipelinesStagesRemove { pipeline, stage } => {
            pipelines::stages_remove(c, &pipeline, &stage).await
        }
        Command::PipelinesTargetsAdd {
            pipeline,
            stage,
            app,
        } => pipelines::targets_add(c, &pipeline, &stage, &app).await,
        Command::PipelinesTargetsRemove {
            pipeline,
            stage,
            app,
        } => pipelines::targets_remove(c, &pipeline, &stage, &app).await,
        Command::PipelinesEnv { pipeline, stage } => pipelines::env(c, &pipeline, &stage).await,
        Command::PipelinesEnvSet {
            pipeline,
            stage,
            pairs,
        } => pipelines::env_set(c, &pipeline, &stage, &pairs).await,
        Command::PipelinesEnvUnset {
            pipeline,
            stage,
            keys,
        } => pipelines::env_unset(c, &pipeline, &stage, &keys).await,
        Command::PipelinesDeploy {
            build,
            to,
            pipeline,
        } => pipelines::deploy(c, &build, &to, pipeline.as_deref()).await,
        Command::PipelinesPromote { pipeline, from } => {
            pipelines::promote(c, &pipeline, &from).await
        }
        Command::PipelinesDeploys { pipeline, json } => {
            pipelines::deploys(c, &pipeline, json).await
        }
        Command::BuildsCachePurge { app, confirm } => {
            buildpacks::purge_cache(c, &resolve_app(app.app)?, confirm.as_deref()).await
        }
        Command::Buildpacks { app } => buildpacks::list(c, &resolve_app(app.app)?).await,
        Command::BuildpacksSet { app, url, index } => {
            buildpacks::set(c, &resolve_app(app.app)?, &url, index).await
        }
        Command::BuildpacksAdd { app, url, index } => {
            buildpacks::add(c, &resolve_app(app.app)?, &url, index).await
        }
        Command::BuildpacksRemove { app, url, index } => {
            buildpacks::remove(c, &resolve_app(app.app)?, url.as_deref(), index).await
        }
        Command::BuildpacksClear { app } => buildpacks::clear(c, &resolve_app(app.app)?).await,
        Command::Logs {
            app,
            num,
            tail,
            dyno,
            source,
            json,
        } => {
            let args = logs::LogsArgs {
                num,
                tail,
                dyno,
                source,
                json,
            };
            logs::show(c, &global, &resolve_app(app.app)?, args).await
        }
        Command::Drains { app, json } => drains::list(c, &resolve_app(app.app)?, json).await,
        Command::DrainsAdd { app, url } => drains::add(c, &resolve_app(app.app)?, &url).await,
        Command::DrainsRemove { app, url_or_id } => {
            drains::remove(c, &resolve_app(app.app)?, &url_or_id).await
        }
        Command::Domains { app, json } => domains::list(c, &resolve_app(app.app)?, json).await,
        Command::DomainsAdd { app, hostname } => {
            domains::add(c, &resolve_app(app.app)?, &hostname).await
        }
        Command::DomainsRemove { app, hostname } => {
            domains::remove(c, &resolve_app(app.app)?, &hostname).await
        }
        Command::DomainsRedirectHttps { app, switch } => {
            domains::redirect_https(c, &resolve_app(app.app)?, &switch).await
        }
        // Certificates are the server's own unless --app (or SLIPWAY_APP) names an app.
        Command::Certs { app, json } => certs::list(c, app.app.as_deref(), json).await,
        Command::CertsAdd { app, cert, key } => {
            certs::add(c, app.app.as_deref(), &cert, &key).await
        }
        Command::CertsInfo { app, name } => {
            certs::info(c, app.app.as_deref(), name.as_deref()).await
        }
        Command::CertsRemove { app, name } => {
            certs::remove(c, app.app.as_deref(), name.as_deref()).await
        }
        Command::Deploys { app, json } => deploys::list(c, &resolve_app(app.app)?, json).await,
        Command::DeploysInfo { app, deploy, json } => {
            deploys::info(c, &resolve_app(app.app)?, &deploy, json).await
        }
        Command::DeploysWait { app, deploy } => {
            deploys::wait(c, &resolve_app(app.app)?, &deploy).await
        }
        Command::DeploysCancel { app, deploy } => {
            deploys::cancel(c, &resolve_app(app.app)?, &deploy).await
        }
        Command::DeploysStart {
            app,
            release,
            no_rollback,
            watch,
        } => deploys::start(c, &resolve_app(app.app)?, &release, no_rollback, watch).await,
        Command::DeploysSecrets { app } => deploys::secrets(c, &resolve_app(app.app)?).await,
        Command::DeploysSecretsSet { app, pairs } => {
            deploys::secrets_set(c, &resolve_app(app.app)?, &pairs).await
        }
        Command::DeploysSecretsUnset { app, keys } => {
            deploys::secrets_unset(c, &resolve_app(app.app)?, &keys).await
        }
        Command::Webhooks { app } => deploys::webhooks(c, &resolve_app(app.app)?).await,
        Command::WebhooksAdd { app, url } => {
            deploys::webhooks_add(c, &resolve_app(app.app)?, &url).await
        }
        Command::WebhooksRemove { app, url_or_id } => {
            deploys::webhooks_remove(c, &resolve_app(app.app)?, &url_or_id).await
        }
        // ---- release store and host targets (commands/hosts.rs) ----
        Command::Store { name, json } => hosts::store_list(c, name.as_deref(), json).await,
        Command::StoreImport {
            file,
            name,
            tag,
            commit,
            metadata,
        } => hosts::store_import(c, &file, &name, &tag, commit, metadata).await,
        Command::StoreInfo { name, tag } => hosts::store_info(c, &name, &tag).await,
        Command::StoreDelete { name, tag } => hosts::store_delete(c, &name, &tag).await,
        Command::StorePrune { name, keep } => hosts::store_prune(c, &name, keep).await,
        Command::Targets { json } => hosts::targets_list(c, json).await,
        Command::TargetsAdd {
            name,
            hosts: host_list,
            path,
            key,
            restart,
            health,
            health_attempts,
            health_interval,
            health_timeout,
            pre_switch,
            shared,
            batch,
            url,
            env,
            accept_host_key,
        } => {
            let body = serde_json::json!({
                "name": name, "hosts": host_list, "path": path, "key": key,
                "restart": restart, "health": health, "health_attempts": health_attempts,
                "health_interval": health_interval, "health_timeout": health_timeout,
                "pre_switch": pre_switch, "shared": shared, "batch": batch, "url": url,
                "env": hosts::parse_env(&env)?, "accept_host_keys": accept_host_key,
            });
            hosts::targets_add(c, body).await
        }
        Command::TargetsInfo { name } => hosts::targets_info(c, &name).await,
        Command::TargetsRemove { name, confirm } => {
            hosts::targets_remove(c, &name, confirm.as_deref()).await
        }
        Command::TargetsTrust {
            name,
            accept_host_key,
        } => hosts::targets_trust(c, &name, &accept_host_key).await,
        Command::TargetsDeploy {
            name,
            store_name,
            tag,
            lock_wait,
            lock_ttl,
        } => hosts::targets_deploy(c, &name, &store_name, &tag, lock_wait, lock_ttl).await,
        Command::TargetsRollback {
            name,
            tag,
            lock_wait,
        } => hosts::targets_rollback(c, &name, tag, lock_wait).await,
        Command::TargetsReleases { name, json } => hosts::targets_releases(c, &name, json).await,
        Command::TargetsDeploys { name, json } => hosts::targets_deploys(c, &name, json).await,
        Command::TargetsPrune { name, keep } => hosts::targets_prune(c, &name, keep).await,
        Command::TargetsPin { name, tag, unpin } => {
            hosts::targets_pin(c, &name, &tag, !unpin).await
        }
        Command::TargetsExec { name, command } => {
            hosts::targets_exec(c, &name, &command.join(" ")).await
        }
        Command::TargetsUnlock { name } => hosts::targets_unlock(c, &name).await,
        Command::TargetsEnvSet { name, pairs } => {
            hosts::targets_env(c, &name, hosts::parse_env(&pairs)?, Vec::new()).await
        }
        Command::TargetsEnvUnset { name, keys } => {
            hosts::targets_env(c, &name, Default::default(), keys).await
        }
        Command::GitRemote { app, remote } => {
            git::remote(c, &global, &resolve_app(app.app)?, &remote).await
        }
        Command::Server(_)
        | Command::Hook(_)
        | Command::GitCredential { .. }
        | Command::Run(_)
        | Command::DynoMonitor { .. } => {
            bail!("internal error: command dispatched to the wrong place")
        }
    }
}

fn run_options(args: crate::cli::RunArgs) -> run::RunOptions {
    run::RunOptions {
        command: args.command,
        env: args.env,
        size: args.size,
        ttl: args.ttl,
        no_tty: args.no_tty,
    }
}

/// `slipway run`: returns the command's exit status, for the process to exit with.
pub async fn run_attached(global: Global, args: crate::cli::RunArgs) -> anyhow::Result<i32> {
    let client = Client::from_global(&global)?;
    let app = resolve_app(args.app.app.clone())?;
    run::attached(&client, &app, run_options(args)).await
}

/// A string field of an API object, or "".
fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}

/// `2026/11/22 04:10:00 (~ 5m ago)`, as the Heroku CLI shows times.
fn when(v: &Value) -> String {
    let Some(t) = v
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
    else {
        return String::new();
    };
    let t = t.with_timezone(&Utc);
    let ago = (Utc::now() - t).num_seconds().max(0);
    let rel = match ago {
        a if a < 60 => format!("{a}s"),
        a if a < 3600 => format!("{}m", a / 60),
        a if a < 86400 => format!("{}h", a / 3600),
        a => format!("{}d", a / 86400),
    };
    format!(
        "{} (~ {rel} ago)",
        t.with_timezone(&Local).format("%Y/%m/%d %H:%M:%S")
    )
}

fn app_path(app: &str) -> String {
    format!("/apps/{app}")
}

/// Runs a request while `doing...` is on stderr, then `done` or `failed`.
async fn progress<T>(
    doing: &str,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    eprint!("{doing}... ");
    match work.await {
        Ok(v) => Ok(v),
        Err(e) => {
            eprintln!("failed");
            Err(e)
        }
    }
}

/// The newest release's version, as `v7` (for "done, v7" lines).
async fn latest_version(client: &Client, app: &str) -> anyhow::Result<String> {
    let req = client
        .request(reqwest::Method::GET, &format!("{}/releases", app_path(app)))
        .header("Range", "version ..; max=1, order=desc");
    let list = client.send(req).await?;
    Ok(list
        .as_array()
        .and_then(|l| l.first())
        .map(|r| format!("v{}", r["version"]))
        .unwrap_or_else(|| "no release".into()))
}
