//! The dyno manager reports what happens to dynos as typed events, which the control plane
//! prints in the app's log and records in the store (`control.rs` `record_dyno_events`); the
//! runtime never writes the store itself. Through the real binary and runc: a burst of events
//! (web scaled from 0 to 10 at once, then back to 0) reaches both, each dyno's record agreeing
//! with the dynos API, also after a `kill -9` of the server that left the store behind.

mod support;

use std::collections::BTreeMap;

use serde_json::Value;
use support::{wait_for, Server};

/// Runs `sql` on the server's store with the sqlite3 shell; its output.
fn sqlite(server: &Server, args: &[&str], sql: &str) -> String {
    let out = std::process::Command::new("sqlite3")
        .args(args)
        .arg(server.data.join("state.db"))
        .arg(sql)
        .output()
        .expect("sqlite3 (apt-get install sqlite3)");
    assert!(out.status.success(), "{}", support::text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn check_id(id: &str) -> &str {
    assert!(
        id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'),
        "{id}"
    );
    id
}

/// `name -> (state, pid set, port)` of the app's rows in the store's `dynos` table, read
/// while the server runs.
fn stored_dynos(server: &Server, app_id: &str) -> BTreeMap<String, (String, bool, String)> {
    let app_id = check_id(app_id);
    sqlite(
        server,
        &["-readonly"],
        &format!(
            "SELECT name, state, pid IS NOT NULL, IFNULL(port, '') FROM dynos WHERE app_id = '{app_id}' ORDER BY name"
        ),
    )
    .lines()
        .filter_map(|l| {
            let mut f = l.split('|');
            let name = f.next()?.to_string();
            let state = f.next()?.to_string();
            let pid = f.next()? == "1";
            let port = f.next()?.to_string();
            Some((name, (state, pid, port)))
        })
        .collect()
}

/// The app's dynos as the API lists them: `name -> (state, id)`.
fn api_dynos(server: &Server, app: &str) -> BTreeMap<String, (String, String)> {
    let (status, _, body) = server.api("GET", &format!("/apps/{app}/dynos"), None);
    assert_eq!(status, 200, "{body}");
    let list: Vec<Value> = serde_json::from_str(&body).expect("dynos json");
    list.iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap_or_default().to_string(),
                (
                    d["state"].as_str().unwrap_or_default().to_string(),
                    d["id"].as_str().unwrap_or_default().to_string(),
                ),
            )
        })
        .collect()
}

/// The app's log as the server has it now.
fn count(lines: &[String], needle: &str) -> usize {
    lines.iter().filter(|l| l.contains(needle)).count()
}

#[test]
fn scaling_web_from_0_to_10_and_back_reaches_the_log_and_the_store_whole() {
    let mut server = Server::start();
    let repo = server.app_repo(
        "burst",
        &[(
            "Procfile",
            "web: exec python3 -m http.server $PORT --bind 127.0.0.1\n",
        )],
    );
    let pushed = server.git_ok(&repo, &["push", "slipway", "main"]);
    assert!(pushed.contains("Released v1"), "{pushed}");
    let (status, _, body) = server.api("GET", "/apps/burst", None);
    assert_eq!(status, 200, "{body}");
    let app: Value = serde_json::from_str(&body).expect("app json");
    let app_id = app["id"].as_str().expect("app id").to_string();

    server.cli_ok(&repo, &["ps:scale", "web=0"]);
    wait_for(60, "no web dyno left, in the API and the store", || {
        (api_dynos(&server, "burst").is_empty() && stored_dynos(&server, &app_id).is_empty())
            .then_some(())
    });

    // Ten dynos start at once: each one's events (added, recorded, starting, up) arrive
    // together.
    server.cli_ok(&repo, &["ps:scale", "web=10"]);
    let names: Vec<String> = (1..=10).map(|i| format!("web.{i}")).collect();
    // web.1 ran twice: from the deploy, then from the scale.
    let want = |name: &str| if name == "web.1" { 2 } else { 1 };
    let api = wait_for(120, "ten web dynos up in the API", || {
        let api = api_dynos(&server, "burst");
        (api.len() == 10 && api.values().all(|(state, _)| state == "up")).then_some(api)
    });
    assert_eq!(api.keys().cloned().collect::<Vec<_>>(), {
        let mut sorted = names.clone();
        sorted.sort();
        sorted
    });
    // The store follows the same events: a row per dyno, up, with its pid and port.
    let stored = wait_for(30, "ten web dynos up in the store", || {
        let stored = stored_dynos(&server, &app_id);
        (stored.len() == 10 && stored.values().all(|(state, _, _)| state == "up")).then_some(stored)
    });
    for (name, (_, pid, port)) in &stored {
        assert!(*pid, "{name} has no pid in the store: {stored:?}");
        assert!(port.parse::<u16>().is_ok(), "{name}: {stored:?}");
    }
    // And the log has each dyno's lines.
    let lines = wait_for(30, "each dyno's state change in the log", || {
        let lines = server.log_lines(&repo);
        names
            .iter()
            .all(|n| {
                count(
                    &lines,
                    &format!("heroku[{n}]: State changed from starting to up"),
                ) >= 1
            })
            .then_some(lines)
    });
    for name in &names {
        let want = want(name);
        assert_eq!(
            count(
                &lines,
                &format!("heroku[{name}]: State changed from starting to up")
            ),
            want,
            "{name}: {lines:#?}"
        );
        assert_eq!(
            count(
                &lines,
                &format!("heroku[{name}]: Starting process with command")
            ),
            want,
            "{name}: {lines:#?}"
        );
    }

    // A server killed before it stored some events: three rows missing, one left over from
    // a dyno long gone. The next server re-adopts the same ten dynos and the store catches up.
    server.kill9();
    let ids = |api: &BTreeMap<String, (String, String)>| -> Vec<String> {
        api.values().map(|(_, id)| id.clone()).collect()
    };
    let before = ids(&api);
    let doomed: Vec<&str> = before.iter().take(3).map(|id| check_id(id)).collect();
    let gone = "00000000-0000-4000-8000-000000000000";
    sqlite(
        &server,
        &[],
        &format!(
            "DELETE FROM dynos WHERE id IN ('{}'); INSERT INTO dynos (id, app_id, name, process_type, command, release_version, state, pid, port, dir, created_at, updated_at) VALUES ('{gone}', '{}', 'web.11', 'web', 'true', 1, 'up', NULL, NULL, '/nonexistent', 0, 0);",
            doomed.join("','"),
            check_id(&app_id)
        ),
    );
    server.launch();
    let stored_ids = wait_for(30, "the store's copy caught up", || {
        let out = sqlite(
            &server,
            &["-readonly"],
            &format!("SELECT id FROM dynos WHERE app_id = '{app_id}' AND state = 'up' ORDER BY id"),
        );
        let stored: Vec<String> = out.lines().map(str::to_string).collect();
        (stored.len() == 10).then_some(stored)
    });
    let mut sorted = before.clone();
    sorted.sort();
    assert_eq!(stored_ids, sorted, "the same ten dynos, nothing restarted");
    assert_eq!(ids(&api_dynos(&server, "burst")), before);
    assert!(!stored_dynos(&server, &app_id).contains_key("web.11"));

    // Ten stop at once: every row goes, every stop is in the log.
    server.cli_ok(&repo, &["ps:scale", "web=0"]);
    wait_for(60, "no web dyno left in the store", || {
        stored_dynos(&server, &app_id).is_empty().then_some(())
    });
    let lines = wait_for(30, "each dyno's stop in the log", || {
        let lines = server.log_lines(&repo);
        names
            .iter()
            .all(|n| {
                count(
                    &lines,
                    &format!("heroku[{n}]: State changed from up to down"),
                ) >= want(n)
            })
            .then_some(lines)
    });
    for name in &names {
        let want = want(name);
        assert_eq!(
            count(
                &lines,
                &format!("heroku[{name}]: State changed from up to down")
            ),
            want,
            "{name}: {lines:#?}"
        );
        assert_eq!(
            count(
                &lines,
                &format!("heroku[{name}]: Stopping all processes with SIGTERM")
            ),
            want,
            "{name}: {lines:#?}"
        );
    }
    assert!(api_dynos(&server, "burst").is_empty());
}
