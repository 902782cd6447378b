//! The dyno manager against real processes and real runc: each scenario runs under both
//! backends.

use super::*;
use slipway_logs::Filter;

struct Fixture {
    _dir: tempfile::TempDir,
    manager: DynoManager,
    logs: LogHub,
    /// What a control plane would keep from the record stream (see [`Recorder`]).
    recorded: Recorder,
    release: ReleaseSpec,
    dynos_dir: PathBuf,
    app: String,
}

/// A control plane's side of the record stream, as `slipway-api`'s `control.rs` does it:
/// prints each event's lines and keeps the dyno records.
#[derive(Clone, Default)]
struct Recorder {
    records: Arc<Mutex<BTreeMap<String, DynoRecord>>>,
}

impl Recorder {
    fn handle(&self, stamped: &Stamped, logs: &LogHub) {
        stamped.print(logs);
        let mut records = self.records.lock().expect("records");
        match &stamped.event {
            DynoEvent::Recorded(record) => {
                records.insert(record.id.clone(), (**record).clone());
            }
            DynoEvent::Removed { dyno_id, .. } => {
                records.remove(dyno_id);
            }
            _ => {}
        }
    }

    fn follow(&self, mut stream: EventStream, logs: LogHub) {
        let me = self.clone();
        tokio::spawn(async move {
            while let Some(stamped) = stream.recv().await {
                me.handle(&stamped, &logs);
            }
        });
    }

    fn all(&self) -> Vec<DynoRecord> {
        self.records
            .lock()
            .expect("records")
            .values()
            .cloned()
            .collect()
    }
}

async fn fixture(kind: RuntimeKind, stop_timeout: Duration) -> Fixture {
    fixture_with(kind, |cfg| cfg.stop_timeout = stop_timeout).await
}

async fn fixture_with(kind: RuntimeKind, tune: impl FnOnce(&mut RuntimeConfig)) -> Fixture {
    let f = unrecorded_fixture(kind, tune).await;
    let stream = f.manager.take_events().expect("the record stream");
    f.recorded.follow(stream, f.logs.clone());
    f
}

/// A fixture whose record stream nobody reads yet.
async fn unrecorded_fixture(kind: RuntimeKind, tune: impl FnOnce(&mut RuntimeConfig)) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    // App users must be able to pass through to their dyno directories (process backend).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let src = dir.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    std::fs::write(src.join("index.html"), "hello from the slug").expect("write");
    let slug = dir.path().join("slug.tgz");
    let info =
        slipway_build::create_slug(&src, &slug, &slipway_build::Limits::default()).expect("slug");
    let app = format!("app-{}", uuid::Uuid::new_v4());
    let logs = LogHub::new();
    let dynos_dir = dir.path().join("dynos");
    let mut cfg = RuntimeConfig::new(dynos_dir.clone());
    cfg.runtime = kind;
    cfg.boot_timeout = Duration::from_secs(20);
    cfg.monitor_command = test_monitor();
    tune(&mut cfg);
    let manager = DynoManager::new(cfg, logs.clone()).expect("dyno manager");
    let wanted = match kind {
        RuntimeKind::Oci => "oci (",
        _ => "process (",
    };
    assert!(
        manager.runtime_description().starts_with(wanted),
        "{}",
        manager.runtime_description()
    );
    let release = ReleaseSpec {
        app_id: app.clone(),
        version: 1,
        slug_path: slug,
        slug_checksum: info.checksum,
        env: BTreeMap::from([("GREETING".to_string(), "hi".to_string())]),
        healthchecks: Vec::new(),
    };
    Fixture {
        _dir: dir,
        manager,
        logs,
        recorded: Recorder::default(),
        release,
        dynos_dir,
        app,
    }
}

/// This test binary, running only [`dyno_monitor_entry`]: the dyno monitor without the
/// `slipway` binary (the monitor directory is appended as the last argument).
fn test_monitor() -> Vec<std::ffi::OsString> {
    let exe = std::env::current_exe().expect("test binary");
    vec![
        exe.into(),
        "--exact".into(),
        "tests::dyno_monitor_entry".into(),
        "--nocapture".into(),
    ]
}

/// The dyno monitor, when this test binary is started as one (see [`test_monitor`]); a no-op
/// test otherwise.
#[test]
fn dyno_monitor_entry() {
    let Some(last) = std::env::args().next_back() else {
        return;
    };
    let dir = Path::new(&last);
    if dir.is_absolute() && dir.join(monitor::LAUNCH_FILE).is_file() {
        std::process::exit(monitor::main(dir));
    }
}

fn spec(process_type: &str, quantity: u32, command: &str) -> ProcessSpec {
    ProcessSpec {
        process_type: process_type.into(),
        quantity,
        command: command.into(),
        size: crate::DynoSize::standard_1x(),
    }
}

async fn wait_for_log(f: &Fixture, needle: &str) -> Vec<String> {
    wait_for_logs(f, needle, 1).await
}

/// Waits until `count` lines contain `needle`; returns the whole log.
async fn wait_for_logs(f: &Fixture, needle: &str, count: usize) -> Vec<String> {
    let lines = || -> Vec<String> {
        f.logs
            .history(&f.app, &Filter::default(), usize::MAX)
            .iter()
            .map(|l| l.format())
            .collect()
    };
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let now = lines();
            if now.iter().filter(|l| l.contains(needle)).count() >= count {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    match found {
        Ok(lines) => lines,
        Err(_) => panic!(
            "no {count} log lines containing {needle:?} within 30 s; the log:\n{}",
            lines().join("\n")
        ),
    }
}

async fn web_dyno_boots_serves_from_its_own_copy_and_stops(kind: RuntimeKind) {
    let f = fixture(kind, Duration::from_secs(10)).await;
    let mut events = f.manager.subscribe();
    let web = spec("web", 1, "echo \"greeting=$GREETING dyno=$DYNO\"; exec python3 -m http.server $PORT --bind 127.0.0.1");
    f.manager.converge(f.release.clone(), &[web]);
    wait_for_log(&f, "State changed from starting to up").await;
    let lines = wait_for_log(&f, "greeting=hi dyno=web.1").await;
    assert!(lines
        .iter()
        .any(|l| l.contains("heroku[web.1]: Starting process with command `echo")));
    let WebStatus::Up(backends) = f.manager.web_status(&f.app) else {
        panic!("web dyno not up")
    };
    assert_eq!(backends.len(), 1);
    let body = http_get(backends[0].addr).await;
    assert!(body.contains("hello from the slug"), "{body}");

    let listed = f.manager.list(&f.app);
    assert_eq!(listed.len(), 1);
    let dir = f.dynos_dir.join(&f.app).join(&listed[0].id);
    match kind {
        // /app is an overlay of the release directory (`releasedir.rs`).
        RuntimeKind::Oci => assert!(dir.join("release").exists() && dir.join("upper").is_dir()),
        _ => assert!(dir.join("app/index.html").exists()),
    }
    // The runtime's own record, and the copy its events gave the recorder.
    let own = record::DynoRecord::load(&attach::monitor_dir(&f.dynos_dir, &listed[0].id))
        .expect("the dyno's record");
    assert_eq!(own.port, listed[0].port);
    assert!(own.pid.is_some());
    assert_eq!(own.state, DynoState::Up);
    let recorded = slipway_testkit::wait_until(10, "the record of web.1 up", || async {
        let all = f.recorded.all();
        (all.len() == 1 && all[0].state == DynoState::Up).then_some(all)
    })
    .await;
    assert_eq!(recorded[0], own);

    f.manager.stop_app(&f.app).await;
    let lines = wait_for_log(&f, "State changed from up to down").await;
    assert!(lines
        .iter()
        .any(|l| l.contains("Stopping all processes with SIGTERM")));
    // SIGTERM reached the server (it `exec`s and installs no handler: never PID 1).
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Process exited with status 143")),
        "{lines:#?}"
    );
    assert!(!lines.iter().any(|l| l.contains("R12")), "{lines:#?}");
    assert!(!dir.exists(), "the dyno's filesystem is thrown away");
    // The same life as typed events, ending with the dyno's removal.
    let mut seen = Vec::new();
    loop {
        match events.recv().await.expect("event") {
            DynoEvent::Changed { from, to, name, .. } => {
                assert_eq!(name, "web.1");
                seen.push((from, to));
            }
            DynoEvent::Removed { name, .. } => {
                assert_eq!(name, "web.1");
                break;
            }
            DynoEvent::MemoryQuotaExceeded { .. } => panic!("a small server is over quota"),
            DynoEvent::Added { name, .. } => assert_eq!(name, "web.1"),
            DynoEvent::Sleep { .. } => panic!("the app does not sleep"),
            DynoEvent::Routing { name, .. } => assert_eq!(name, "web.1"),
            other => panic!("not a notification: {other:?}"),
        }
    }
    let up = DynoState::Up;
    assert_eq!(
        seen,
        [
            (Lifecycle::Starting, Lifecycle::Up),
            (Lifecycle::Up, Lifecycle::Stopping { from: up }),
            (Lifecycle::Stopping { from: up }, Lifecycle::Down),
        ]
    );
    slipway_testkit::wait_until(10, "no dyno recorded", || async {
        f.recorded.all().is_empty().then_some(())
    })
    .await;
    assert_eq!(f.manager.web_status(&f.app), WebStatus::NoWebDynos);
}

async fn crashing_dynos_are_logged_and_restarted(kind: RuntimeKind) {
    let f = fixture(kind, Duration::from_secs(5)).await;
    f.manager
        .converge(f.release.clone(), &[spec("worker", 1, "echo boom; exit 3")]);
    let lines = wait_for_log(&f, "State changed from crashed to starting").await;
    assert!(lines.iter().any(|l| l.contains("app[worker.1]: boom")));
    assert!(lines
        .iter()
        .any(|l| l.contains("heroku[worker.1]: Process exited with status 3")));
    assert!(lines
        .iter()
        .any(|l| l.contains("State changed from up to crashed")));
    f.manager.stop_app(&f.app).await;
    assert!(f.manager.list(&f.app).is_empty());
}

async fn sigterm_then_sigkill_after_the_stop_timeout(kind: RuntimeKind) {
    let f = fixture(kind, Duration::from_secs(1)).await;
    f.manager.converge(
        f.release.clone(),
        &[spec(
            "worker",
            1,
            "trap '' TERM; echo ready; while true; do sleep 1; done",
        )],
    );
    wait_for_log(&f, "app[worker.1]: ready").await;
    f.manager.stop_app(&f.app).await;
    let lines = wait_for_log(&f, "Error R12 (Exit timeout)").await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Process exited with status 137")),
        "{lines:#?}"
    );
    // SIGKILL comes the stop timeout (1 s) after SIGTERM, not before, and not much later.
    let time_of = |needle: &str| {
        let line = lines
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?}: {lines:#?}"));
        let stamp = line.split_whitespace().next().unwrap_or_default();
        chrono::DateTime::parse_from_rfc3339(stamp).unwrap_or_else(|e| panic!("{line}: {e}"))
    };
    let waited =
        time_of("Error R12 (Exit timeout)") - time_of("Stopping all processes with SIGTERM");
    assert!(
        waited >= chrono::Duration::milliseconds(990) && waited < chrono::Duration::seconds(5),
        "SIGKILL {waited} after SIGTERM"
    );
}

async fn scaling_and_new_releases_replace_the_right_dynos(kind: RuntimeKind) {
    let f = fixture(kind, Duration::from_secs(5)).await;
    let cmd = "exec sleep 1000";
    f.manager
        .converge(f.release.clone(), &[spec("worker", 2, cmd)]);
    wait_for_log(&f, "heroku[worker.2]: State changed from starting to up").await;
    let before: Vec<String> = f
        .manager
        .list(&f.app)
        .iter()
        .map(|d| d.id.clone())
        .collect();
    // Same release and quantity: nothing changes.
    f.manager
        .converge(f.release.clone(), &[spec("worker", 2, cmd)]);
    let same: Vec<String> = f
        .manager
        .list(&f.app)
        .iter()
        .map(|d| d.id.clone())
        .collect();
    assert_eq!(before, same);
    // Scale down: worker.2 goes.
    f.manager
        .converge(f.release.clone(), &[spec("worker", 1, cmd)]);
    wait_for_log(&f, "heroku[worker.2]: State changed from up to down").await;
    // A new release replaces worker.1.
    let mut v2 = f.release.clone();
    v2.version = 2;
    f.manager.converge(v2, &[spec("worker", 1, cmd)]);
    wait_for_log(&f, "heroku[worker.1]: State changed from up to down").await;
    let now = slipway_testkit::wait_until(10, "one dyno left", || async {
        let now = f.manager.list(&f.app);
        (now.len() == 1).then_some(now)
    })
    .await;
    assert_eq!(now[0].release_version, 2);
    f.manager.stop_all().await;
}

async fn a_web_dyno_that_never_binds_is_killed_r10(kind: RuntimeKind) {
    let f = fixture_with(kind, |cfg| cfg.boot_timeout = Duration::from_secs(1)).await;
    f.manager.converge(
        f.release.clone(),
        &[spec("web", 1, "echo started; exec sleep 600")],
    );
    let lines = wait_for_log(&f, "State changed from starting to crashed").await;
    let r10 = lines
        .iter()
        .position(|l| {
            l.contains(
                "Error R10 (Boot timeout) -> Web process failed to bind to $PORT within 1 seconds",
            )
        })
        .unwrap_or_else(|| panic!("no R10: {lines:#?}"));
    assert!(
        lines[r10 + 1].contains("Stopping process with SIGKILL"),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Process exited with status 137")),
        "{lines:#?}"
    );
    f.manager.stop_app(&f.app).await;
}

/// Ten crash-looping workers make a burst of events that nobody reads until they are all
/// stopped: every one is still on the record stream, in order, each dyno's transitions an
/// unbroken chain from `starting` to `down`, and printing them gives one log line per event
/// that says something.
async fn a_burst_of_events_reaches_the_record_stream_whole(kind: RuntimeKind) {
    let f = unrecorded_fixture(kind, |cfg| cfg.stop_timeout = Duration::from_secs(5)).await;
    let mut notes = f.manager.subscribe();
    f.manager.converge(
        f.release.clone(),
        &[spec("worker", 10, "echo crashing; exit 1")],
    );
    // Notifications may skip ahead (`Lagged`); they only tell when to stop waiting.
    let mut crashes: BTreeMap<String, u32> = BTreeMap::new();
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        while crashes.len() < 10 || crashes.values().any(|c| *c < 2) {
            match notes.recv().await {
                Ok(DynoEvent::Changed {
                    name,
                    to: Lifecycle::Crashed,
                    ..
                }) => *crashes.entry(name).or_default() += 1,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => panic!("closed"),
            }
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "ten workers did not crash twice each: {crashes:?}"
    );
    f.manager.stop_app(&f.app).await;

    let mut stream = f.manager.take_events().expect("the record stream");
    let mut all = Vec::new();
    while let Ok(stamped) = stream.try_recv() {
        all.push(stamped);
    }
    assert!(all.len() > 100, "only {} events", all.len());
    assert_eq!(all.len() as u64, f.manager.last_event());
    for (i, stamped) in all.iter().enumerate() {
        assert_eq!(stamped.seq, i as u64 + 1, "event {i} out of order");
    }
    // Per dyno: added, an unbroken chain of transitions from starting to down, removed.
    struct Life {
        name: String,
        added: bool,
        states: Vec<Lifecycle>,
        removed: bool,
    }
    let mut lives: BTreeMap<String, Life> = BTreeMap::new();
    for stamped in &all {
        match &stamped.event {
            DynoEvent::Added { dyno_id, name, .. } => {
                let life = Life {
                    name: name.clone(),
                    added: true,
                    states: vec![Lifecycle::Starting],
                    removed: false,
                };
                assert!(lives.insert(dyno_id.clone(), life).is_none(), "added twice");
            }
            DynoEvent::Changed {
                dyno_id, from, to, ..
            } => {
                let life = lives.get_mut(dyno_id).expect("changed before added");
                assert!(!life.removed, "{}: changed after removal", life.name);
                assert_eq!(
                    life.states.last(),
                    Some(from),
                    "{}: a transition is missing",
                    life.name
                );
                life.states.push(*to);
            }
            DynoEvent::Removed { dyno_id, .. } => {
                let life = lives.get_mut(dyno_id).expect("removed before added");
                life.removed = true;
            }
            _ => {}
        }
    }
    assert_eq!(lives.len(), 10);
    for life in lives.values() {
        assert!(life.added && life.removed, "{}", life.name);
        assert_eq!(life.states.last(), Some(&Lifecycle::Down), "{}", life.name);
        let crashed = life
            .states
            .iter()
            .filter(|s| **s == Lifecycle::Crashed)
            .count();
        assert!(crashed >= 2, "{}: {:?}", life.name, life.states);
    }
    // Printed, as the control plane does: a line for each event that says something, and
    // no record left.
    let recorder = Recorder::default();
    for stamped in &all {
        recorder.handle(stamped, &f.logs);
    }
    assert!(recorder.all().is_empty(), "{:?}", recorder.all());
    let lines: Vec<String> = f
        .logs
        .history(&f.app, &Filter::default(), usize::MAX)
        .iter()
        .map(|l| l.format())
        .collect();
    for life in lives.values() {
        let exits = all
            .iter()
            .filter(|s| matches!(&s.event, DynoEvent::Exited { name, .. } if *name == life.name))
            .count();
        let changes = life
            .states
            .windows(2)
            .filter(|w| w[0].public() != w[1].public())
            .count();
        let count = |needle: String| lines.iter().filter(|l| l.contains(&needle)).count();
        assert_eq!(
            count(format!("heroku[{}]: Process exited with status", life.name)),
            exits,
            "{lines:#?}"
        );
        assert_eq!(
            count(format!("heroku[{}]: State changed from", life.name)),
            changes,
            "{lines:#?}"
        );
    }
}

/// A server that dies leaves its dynos running; the next one finds them from the runtime's own
/// records (`dyno.json`), from the control plane's copy for a dyno whose record is missing (a
/// dyno of a server from before those records: it gets one), and removes a monitor directory
/// nobody recorded, killing the process it names. The same processes are adopted.
fn a_new_manager_recovers_recorded_known_and_unrecorded_dynos(kind: RuntimeKind) {
    let first = tokio::runtime::Runtime::new().expect("runtime");
    let (f, before, stray) = first.block_on(async {
        let f = fixture(kind, Duration::from_secs(5)).await;
        f.manager.converge(
            f.release.clone(),
            &[spec("worker", 2, "echo ready; exec sleep 600")],
        );
        let before = slipway_testkit::wait_until(30, "two workers recorded up", || async {
            let all = f.recorded.all();
            (all.len() == 2
                && all
                    .iter()
                    .all(|r| r.state == DynoState::Up && r.pid.is_some()))
            .then_some(all)
        })
        .await;
        // Running, not only started (a new OCI backend replaces the stack's /etc, which a
        // container still being set up would miss).
        wait_for_log(&f, "app[worker.1]: ready").await;
        wait_for_log(&f, "app[worker.2]: ready").await;
        // A monitor directory without a record, naming a process of its dyno id.
        let stray_id = uuid::Uuid::new_v4().to_string();
        let stray_dir = attach::monitor_dir(&f.dynos_dir, &stray_id);
        std::fs::create_dir_all(&stray_dir).expect("stray dir");
        let stray = std::process::Command::new("sleep")
            .arg("600")
            .env("SLIPWAY_DYNO_ID", &stray_id)
            .spawn()
            .expect("stray process");
        std::fs::write(
            stray_dir.join(monitor::PID_FILE),
            format!("{{\"monitor\":{0},\"dyno\":{0}}}", stray.id()),
        )
        .expect("pid file");
        (f, before, (stray, stray_dir))
    });
    // The server dies: its tasks are gone, the monitors (other processes) stay.
    first.shutdown_background();
    let (mut stray, stray_dir) = stray;
    let worker2 = before
        .iter()
        .find(|r| r.name == "worker.2")
        .expect("worker.2");
    let worker2_dir = attach::monitor_dir(&f.dynos_dir, &worker2.id);
    std::fs::remove_file(worker2_dir.join(record::RECORD_FILE)).expect("remove a record");

    let second = tokio::runtime::Runtime::new().expect("runtime");
    second.block_on(async {
        let mut cfg = RuntimeConfig::new(f.dynos_dir.clone());
        cfg.runtime = kind;
        cfg.monitor_command = test_monitor();
        let manager = DynoManager::new(cfg, f.logs.clone()).expect("dyno manager");
        let recorded = Recorder::default();
        recorded.follow(manager.take_events().expect("stream"), f.logs.clone());
        // The control plane knows worker.2 only from its own copy.
        let alive = manager.recover(vec![worker2.clone()]).await;
        let mut names: Vec<&str> = alive.iter().map(|r| r.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["worker.1", "worker.2"]);
        for r in &alive {
            let was = before.iter().find(|b| b.id == r.id).expect("same dyno");
            assert_eq!(r.pid, was.pid, "{}", r.name);
        }
        assert_eq!(
            record::DynoRecord::load(&worker2_dir).as_ref(),
            Some(worker2),
            "worker.2 got its record back"
        );
        assert!(
            !stray_dir.exists(),
            "the unrecorded monitor directory is removed"
        );
        let reaped = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if stray.try_wait().expect("wait").is_some() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            reaped.is_ok(),
            "the unrecorded dyno's process was not killed"
        );

        for r in &alive {
            manager.adopt(r, &f.release).await;
        }
        // The new control plane's copy gets both records from the adoption.
        let copy = slipway_testkit::wait_until(10, "both adopted dynos recorded", || async {
            let all = recorded.all();
            (all.len() == 2).then_some(all)
        })
        .await;
        let mut want = alive.clone();
        want.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(copy, want);
        let listed = manager.list(&f.app);
        assert_eq!(listed.len(), 2);
        assert!(
            listed.iter().all(|d| d.state == DynoState::Up),
            "{listed:?}"
        );
        for r in &alive {
            let pid = r.pid.expect("pid");
            assert!(
                crate::process::pid_belongs_to_dyno(i64::from(pid), &r.id),
                "{} restarted",
                r.name
            );
        }
        manager.stop_app(&f.app).await;
        slipway_testkit::wait_until(10, "no dyno recorded", || async {
            recorded.all().is_empty().then_some(())
        })
        .await;
    });
}

#[test]
fn process_a_new_manager_recovers_recorded_known_and_unrecorded_dynos() {
    a_new_manager_recovers_recorded_known_and_unrecorded_dynos(RuntimeKind::Process);
}

#[test]
fn oci_a_new_manager_recovers_recorded_known_and_unrecorded_dynos() {
    a_new_manager_recovers_recorded_known_and_unrecorded_dynos(RuntimeKind::Oci);
}

fn cgroup_v1() -> bool {
    std::path::Path::new("/sys/fs/cgroup/memory/memory.stat").exists()
}

/// A process type whose dynos have a 16 MB quota: the kernel kills at 32 MB.
fn small_spec(process_type: &str, command: &str) -> ProcessSpec {
    ProcessSpec {
        size: DynoSize::new("test-16M", 16 * 1024 * 1024, 64),
        ..spec(process_type, 1, command)
    }
}

fn small(cfg: &mut RuntimeConfig) {
    cfg.memory_check_interval = Duration::from_millis(200);
    cfg.stop_timeout = Duration::from_secs(5);
}

#[tokio::test]
async fn oci_memory_past_the_limit_is_r15_and_the_dyno_restarts() {
    let f = fixture_with(RuntimeKind::Oci, small).await;
    let hog = "echo allocating; python3 -c 'import time; a = b\"x\" * (96 << 20); time.sleep(60)'";
    f.manager
        .converge(f.release.clone(), &[small_spec("worker", hog)]);
    let lines = wait_for_log(&f, "State changed from crashed to starting").await;
    let r15 = lines
        .iter()
        .position(|l| l.contains("heroku[worker.1]: Error R15 (Memory quota vastly exceeded)"))
        .unwrap_or_else(|| panic!("no R15: {lines:#?}"));
    assert!(
        lines[r15 + 1].contains("Process exited with status 137"),
        "{lines:#?}"
    );
    // Restarted: it runs (and allocates) again.
    wait_for_logs(&f, "app[worker.1]: allocating", 2).await;
    f.manager.stop_app(&f.app).await;
}

#[tokio::test]
async fn oci_memory_over_the_quota_is_r14_and_measured() {
    let f = fixture_with(RuntimeKind::Oci, small).await;
    let over = "python3 -c 'import time; a = b\"x\" * (22 << 20); print(\"holding\", flush=True); time.sleep(600)'";
    f.manager
        .converge(f.release.clone(), &[small_spec("worker", over)]);
    wait_for_log(&f, "app[worker.1]: holding").await;
    let lines = wait_for_log(&f, "Error R14 (Memory quota exceeded)").await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("heroku[worker.1]: Process running mem=")),
        "{lines:#?}"
    );
    assert!(!lines.iter().any(|l| l.contains("R15")), "{lines:#?}");
    let usage = f.manager.list(&f.app)[0].usage.expect("memory measured");
    assert!(usage.memory_bytes > 16 * 1024 * 1024, "{usage:?}");
    assert!(usage.memory_bytes < 32 * 1024 * 1024, "{usage:?}");
    assert!(usage.cpu_nanos.is_some_and(|n| n > 0), "{usage:?}");
    // The parts the runtime metrics print: the held bytes are anonymous (rss).
    assert!(usage.memory_rss_bytes > 16 * 1024 * 1024, "{usage:?}");
    assert!(usage.pgpgin.is_some() == cgroup_v1(), "{usage:?}");
    f.manager.stop_app(&f.app).await;
}

/// The names in `dir` (empty when it does not exist).
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn oci_dynos_share_their_release_unpacked_once_and_write_their_own_app() {
    let f = fixture(RuntimeKind::Oci, Duration::from_secs(5)).await;
    let releases = f.dynos_dir.join(".releases").join(&f.app);
    let cmd = "echo \"$DYNO\" >/app/own.txt; echo \"saw $(cat /app/own.txt) $(cat /app/index.html)\"; exec sleep 1000";
    f.manager
        .converge(f.release.clone(), &[spec("worker", 2, cmd)]);
    wait_for_log(&f, "app[worker.1]: saw worker.1 hello from the slug").await;
    wait_for_log(&f, "app[worker.2]: saw worker.2 hello from the slug").await;
    // One unpack for both, never written by them: each wrote into its own upper layer.
    let unpacked = names(&releases);
    assert_eq!(unpacked.len(), 1, "{unpacked:?}");
    let v1_dir = releases.join(&unpacked[0]);
    assert!(v1_dir.join("app/index.html").is_file());
    assert!(!v1_dir.join("app/own.txt").exists());
    let dynos = f.manager.list(&f.app);
    let mut written: Vec<String> = dynos
        .iter()
        .map(|d| {
            let own = f.dynos_dir.join(&f.app).join(&d.id).join("upper/own.txt");
            std::fs::read_to_string(own)
                .expect("own.txt")
                .trim()
                .to_string()
        })
        .collect();
    written.sort();
    assert_eq!(written, ["worker.1", "worker.2"]);

    // A release with another slug: unpacked beside; the old one goes with its last dyno.
    let src = f._dir.path().join("src2");
    std::fs::create_dir(&src).expect("mkdir");
    std::fs::write(src.join("index.html"), "hello from v2").expect("write");
    let slug = f._dir.path().join("slug2.tgz");
    let info =
        slipway_build::create_slug(&src, &slug, &slipway_build::Limits::default()).expect("slug");
    let v2 = ReleaseSpec {
        version: 2,
        slug_path: slug,
        slug_checksum: info.checksum,
        ..f.release.clone()
    };
    f.manager.converge(v2, &[spec("worker", 1, cmd)]);
    wait_for_log(&f, "app[worker.1]: saw worker.1 hello from v2").await;
    slipway_testkit::wait_until(30, "the old release directory removed", || async {
        let now = names(&releases);
        (now.len() == 1 && now[0] != unpacked[0]).then_some(())
    })
    .await;
    f.manager.stop_app(&f.app).await;
    slipway_testkit::wait_until(30, "no release directory left", || async {
        names(&releases).is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn oci_a_staged_build_becomes_the_release_directory_its_dynos_use() {
    let f = fixture(RuntimeKind::Oci, Duration::from_secs(5)).await;
    let releases = f.dynos_dir.join(".releases").join(&f.app);
    let src = f._dir.path().join("staged-src");
    std::fs::create_dir(&src).expect("mkdir");
    std::fs::write(src.join("index.html"), "hello from the staged build").expect("write");
    let slug = f._dir.path().join("staged.tgz");
    let info =
        slipway_build::create_slug(&src, &slug, &slipway_build::Limits::default()).expect("slug");
    // A slug that was not made: the staged copy goes.
    let dropped = f.manager.stage_release(&f.app, &src).expect("staged");
    assert!(dropped.join("app/index.html").is_file());
    f.manager.finish_release(&f.app, &dropped, None);
    assert!(!dropped.exists());
    // A slug that was: the staged copy is its release directory, before any dyno runs it.
    let staged = f.manager.stage_release(&f.app, &src).expect("staged");
    f.manager
        .finish_release(&f.app, &staged, Some(&info.checksum));
    let hex = info.checksum.trim_start_matches("SHA256:").to_string();
    assert_eq!(names(&releases), [hex.as_str()]);
    // The slug file is not read again: the dyno runs from the staged copy.
    std::fs::remove_file(&slug).expect("rm slug");
    let v2 = ReleaseSpec {
        version: 2,
        slug_path: slug,
        slug_checksum: info.checksum,
        ..f.release.clone()
    };
    let cmd = "echo \"saw $(cat /app/index.html)\"; exec sleep 1000";
    f.manager.converge(v2, &[spec("worker", 1, cmd)]);
    wait_for_log(&f, "app[worker.1]: saw hello from the staged build").await;
    let dyno = &f.manager.list(&f.app)[0];
    let named = std::fs::read_to_string(f.dynos_dir.join(&f.app).join(&dyno.id).join("release"))
        .expect("release file");
    assert_eq!(named, hex);
    f.manager.stop_app(&f.app).await;
}

#[tokio::test]
async fn oci_a_taken_build_becomes_the_release_directory_owned_by_the_app_user() {
    let f = fixture(RuntimeKind::Oci, Duration::from_secs(5)).await;
    let releases = f.dynos_dir.join(".releases").join(&f.app);
    let src = f._dir.path().join("taken-src");
    std::fs::create_dir(&src).expect("mkdir");
    std::fs::write(src.join("index.html"), "hello from the taken build").expect("write");
    std::fs::set_permissions(
        src.join("index.html"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    let slug = f._dir.path().join("taken.tgz");
    let info =
        slipway_build::create_slug(&src, &slug, &slipway_build::Limits::default()).expect("slug");
    let mut taken = f.manager.take_release(&f.app, &src, None).expect("taken");
    // Moved, not copied.
    assert!(!src.exists());
    assert!(taken.app().join("index.html").is_file());
    taken.own().expect("owned");
    assert!(taken.shared().is_empty());
    let staged = taken.staged().to_path_buf();
    f.manager
        .finish_release(&f.app, &staged, Some(&info.checksum));
    let hex = info.checksum.trim_start_matches("SHA256:").to_string();
    assert_eq!(names(&releases), [hex.as_str()]);
    std::fs::remove_file(&slug).expect("rm slug");
    let v2 = ReleaseSpec {
        version: 2,
        slug_path: slug,
        slug_checksum: info.checksum,
        ..f.release.clone()
    };
    // The file is the app user's with the slug's mode, as an unpacked slug's would be.
    let cmd = "echo \"saw $(cat /app/index.html) $(stat -c '%u %a' /app/index.html) as $(id -u)\"; exec sleep 1000";
    f.manager.converge(v2, &[spec("worker", 1, cmd)]);
    let log = wait_for_log(&f, "app[worker.1]: saw hello from the taken build").await;
    let line = log
        .iter()
        .find(|l| l.contains("saw hello from the taken build"))
        .expect("line")
        .split("saw hello from the taken build ")
        .nth(1)
        .expect("rest")
        .to_string();
    let (owner_mode, me) = line.split_once(" as ").expect("as");
    let (owner, mode) = owner_mode.split_once(' ').expect("mode");
    assert_eq!((owner, mode), (me.trim(), "644"), "{line}");
    f.manager.stop_app(&f.app).await;
}

async fn http_get(addr: SocketAddr) -> String {
    let (_, _, body) =
        slipway_testkit::http_async(addr, "GET", "/index.html", &[("Host", "x")], None).await;
    body
}

/// Each scenario, once per backend.
macro_rules! both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod oci {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(super::RuntimeKind::Oci).await
            })*
        }
        mod process {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(super::RuntimeKind::Process).await
            })*
        }
    };
}

both_backends!(
    web_dyno_boots_serves_from_its_own_copy_and_stops,
    crashing_dynos_are_logged_and_restarted,
    sigterm_then_sigkill_after_the_stop_timeout,
    scaling_and_new_releases_replace_the_right_dynos,
    a_web_dyno_that_never_binds_is_killed_r10,
    a_burst_of_events_reaches_the_record_stream_whole,
);

/// Drift made behind `converge`'s back (a dyno stopped, one started, one of another
/// command) is found and corrected by [`DynoManager::reconcile`], each with its
/// `Reconciling:` line; an app in step is left alone.
async fn reconcile_corrects_missing_extra_and_stale_dynos(kind: RuntimeKind) {
    let f = fixture(kind, Duration::from_secs(5)).await;
    let cmd = "exec sleep 1000";
    let formation = [spec("worker", 2, cmd)];
    f.manager.converge(f.release.clone(), &formation);
    wait_for_log(&f, "heroku[worker.2]: State changed from starting to up").await;
    let up = || async {
        let now = f.manager.list(&f.app);
        (now.len() == 2 && now.iter().all(|d| d.lifecycle == Lifecycle::Up)).then_some(now)
    };
    let before = slipway_testkit::wait_until(20, "two workers up", up).await;
    assert!(matches!(
        f.manager.reconcile(f.release.clone(), &formation),
        Reconciled::InStep
    ));
    assert_eq!(
        f.manager
            .list(&f.app)
            .iter()
            .map(|d| &d.id)
            .collect::<Vec<_>>(),
        before.iter().map(|d| &d.id).collect::<Vec<_>>()
    );

    // Missing: worker.2 stopped without a converge.
    let worker2 = f.manager.inner.lock_apps()[&f.app]
        .iter()
        .find(|d| d.name == "worker.2")
        .cloned()
        .expect("worker.2");
    worker2.request_stop();
    worker2.stopped().await;
    slipway_testkit::wait_until(20, "worker.2 gone", || async {
        (f.manager.list(&f.app).len() == 1).then_some(())
    })
    .await;
    let Reconciled::Corrected { corrections, .. } =
        f.manager.reconcile(f.release.clone(), &formation)
    else {
        panic!("worker.2 is missing and was not corrected");
    };
    assert_eq!(
        corrections,
        [Correction::Missing {
            name: "worker.2".into(),
            version: 1
        }]
    );
    wait_for_log(&f, "heroku[worker.2]: Reconciling: not running but wanted").await;
    slipway_testkit::wait_until(20, "two workers up again", up).await;

    // Extra: a worker.3 the formation does not have; stale: a second worker.1 of another
    // command.
    for (name, command) in [("worker.3", cmd), ("worker.1", "exec sleep 999")] {
        let dyno = supervisor::spawn(
            &f.manager.inner,
            &f.release,
            &spec("worker", 1, command),
            name.to_string(),
        );
        f.manager
            .inner
            .lock_apps()
            .get_mut(&f.app)
            .expect("the app's dynos")
            .push(dyno.clone());
        f.manager.inner.added(&dyno);
    }
    slipway_testkit::wait_until(20, "four workers up", || async {
        let now = f.manager.list(&f.app);
        (now.len() == 4 && now.iter().all(|d| d.lifecycle == Lifecycle::Up)).then_some(())
    })
    .await;
    let Reconciled::Corrected {
        mut corrections, ..
    } = f.manager.reconcile(f.release.clone(), &formation)
    else {
        panic!("worker.3 and the second worker.1 were not corrected");
    };
    corrections.sort_by(|a, b| a.name().cmp(b.name()));
    assert_eq!(
        corrections,
        [
            Correction::Stale {
                name: "worker.1".into(),
                running: 1,
                version: 1
            },
            Correction::Extra {
                name: "worker.3".into()
            },
        ]
    );
    wait_for_log(&f, "heroku[worker.3]: State changed from up to down").await;
    let lines = wait_for_logs(&f, "heroku[worker.1]: State changed from up to down", 1).await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("heroku[worker.3]: Reconciling: running but not wanted")),
        "{lines:#?}"
    );
    let now = slipway_testkit::wait_until(20, "the formation back", up).await;
    let commands: Vec<&str> = now.iter().map(|d| d.command.as_str()).collect();
    assert_eq!(commands, [cmd, cmd]);
    assert!(matches!(
        f.manager.reconcile(f.release.clone(), &formation),
        Reconciled::InStep
    ));
    f.manager.stop_all().await;
}

#[tokio::test]
async fn process_reconcile_corrects_missing_extra_and_stale_dynos() {
    reconcile_corrects_missing_extra_and_stale_dynos(RuntimeKind::Process).await;
}

#[tokio::test]
async fn oci_reconcile_corrects_missing_extra_and_stale_dynos() {
    reconcile_corrects_missing_extra_and_stale_dynos(RuntimeKind::Oci).await;
}
