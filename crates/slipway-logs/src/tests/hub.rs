//! The hub: format, filters, ordering, history on disk, tails.

use super::*;

fn line(seq: u64, message: &str) -> LogLine {
    LogLine {
        seq,
        time: DateTime::parse_from_rfc3339("2013-02-11T15:19:10.123456Z")
            .expect("valid time")
            .with_timezone(&Utc),
        source: Source::App,
        dyno: "web.1".into(),
        message: message.into(),
    }
}

fn messages(lines: &[LogLine]) -> Vec<String> {
    lines.iter().map(|l| l.message.clone()).collect()
}

#[test]
fn formats_like_heroku() {
    assert_eq!(
        line(0, "hello").format(),
        "2013-02-11T15:19:10.123456+00:00 app[web.1]: hello"
    );
}

#[test]
fn keeps_bounded_history_and_filters() {
    let hub = LogHub::new();
    for i in 0..HISTORY_LINES + 10 {
        hub.write("a", Source::App, "web.1", &format!("line {i}"));
    }
    hub.write("a", Source::Heroku, "router", "routed");
    hub.write("a", Source::App, "worker.1", "working");
    hub.write("a", Source::App, "webhook.1", "not web");
    let all = hub.history("a", &Filter::default(), usize::MAX);
    assert_eq!(all.len(), HISTORY_LINES);
    assert_eq!(all.last().map(|l| l.message.as_str()), Some("not web"));
    let router = Filter {
        dyno: Some("router".into()),
        source: None,
    };
    assert_eq!(messages(&hub.history("a", &router, 10)), ["routed"]);
    let heroku = Filter {
        dyno: None,
        source: Some("heroku".into()),
    };
    assert_eq!(messages(&hub.history("a", &heroku, 10)), ["routed"]);
    let web = Filter {
        dyno: Some("web".into()),
        source: None,
    };
    assert_eq!(
        messages(&hub.history("a", &web, 2)),
        [
            format!("line {}", HISTORY_LINES + 8),
            format!("line {}", HISTORY_LINES + 9)
        ]
    );
    assert!(hub.history("other", &Filter::default(), 10).is_empty());
}

#[test]
fn sequence_and_time_never_go_back_across_dynos() {
    let hub = LogHub::new();
    for i in 0..500 {
        let dyno = if i % 2 == 0 { "web.1" } else { "web.2" };
        hub.write("a", Source::App, dyno, &format!("{i}"));
    }
    let all = hub.history("a", &Filter::default(), usize::MAX);
    assert_eq!(all.len(), 500);
    for (i, pair) in all.windows(2).enumerate() {
        assert_eq!(pair[1].seq, pair[0].seq + 1, "at {i}");
        assert!(pair[1].time >= pair[0].time, "time went back at {i}");
    }
    assert_eq!(all[0].seq, 0);
}

#[test]
fn splits_long_messages_on_char_boundaries() {
    let hub = LogHub::new();
    let long = "é".repeat(MAX_LINE_BYTES); // 2 bytes each
    hub.write("a", Source::App, "web.1", &long);
    let lines = hub.history("a", &Filter::default(), 10);
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| l.message.len() <= MAX_LINE_BYTES));
    assert_eq!(messages(&lines).concat(), long);
}

#[test]
fn invalid_utf8_is_shown_not_dropped() {
    let hub = LogHub::new();
    hub.write_bytes("a", Source::App, "web.1", b"ok \xff\xfe end");
    assert_eq!(
        messages(&hub.history("a", &Filter::default(), 10)),
        ["ok \u{fffd}\u{fffd} end"]
    );
}

#[test]
fn byte_bound_drops_the_oldest_but_never_the_newest() {
    let hub = LogHub::new();
    hub.set_limits(
        "a",
        HistoryLimits {
            lines: 100,
            bytes: 4096,
        },
    )
    .expect("memory only");
    for i in 0..50 {
        hub.write("a", Source::App, "web.1", &format!("{i:0>200}"));
    }
    let kept = hub.history("a", &Filter::default(), usize::MAX);
    assert!(kept.len() < 50 && kept.len() > 5, "kept {}", kept.len());
    assert_eq!(kept.last().map(|l| l.seq), Some(49));
    // A single line bigger than the bound is still kept.
    hub.write("a", Source::App, "web.1", &"x".repeat(MAX_LINE_BYTES));
    let kept = hub.history("a", &Filter::default(), usize::MAX);
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].seq, 50);
}

fn open(dir: &std::path::Path, lines: usize) -> LogHub {
    LogHub::open(HubConfig {
        dir: Some(dir.to_path_buf()),
        defaults: HistoryLimits {
            lines,
            bytes: HISTORY_BYTES,
        },
        ..HubConfig::default()
    })
    .expect("open the hub")
}

fn segment_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log"))
            })
            .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn history_survives_reopening_and_is_bounded_on_disk() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = open(tmp.path(), 100);
    for i in 0..1000 {
        hub.write("app-1", Source::App, "web.1", &format!("line {i}"));
    }
    hub.write("app-2", Source::Heroku, "router", "other app");
    hub.flush().await;
    drop(hub);
    // Segments hold a quarter of the limit each: at most the limit plus one segment remains.
    let segments = segment_count(&tmp.path().join("app-1"));
    assert!((4..=5).contains(&segments), "{segments} segments");

    let hub = open(tmp.path(), 100);
    let all = hub.history("app-1", &Filter::default(), usize::MAX);
    assert_eq!(all.len(), 100);
    assert_eq!(all[0].message, "line 900");
    assert_eq!(all[99].message, "line 999");
    assert_eq!(all[99].seq, 999);
    assert_eq!(
        messages(&hub.history("app-2", &Filter::default(), 10)),
        ["other app"]
    );
    // Numbering and time go on from where the last server stopped.
    hub.write("app-1", Source::App, "web.1", "after restart");
    let last = hub.history("app-1", &Filter::default(), 1);
    assert_eq!(last[0].seq, 1000);
    assert!(last[0].time >= all[99].time);
}

#[tokio::test]
async fn per_app_limits_are_kept_with_the_history() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = open(tmp.path(), 1500);
    let small = HistoryLimits {
        lines: 10,
        bytes: HISTORY_BYTES,
    };
    hub.set_limits("a", small).expect("set limits");
    for i in 0..30 {
        hub.write("a", Source::App, "web.1", &format!("{i}"));
    }
    hub.flush().await;
    drop(hub);
    let hub = open(tmp.path(), 1500);
    assert_eq!(hub.limits("a"), small);
    let kept = hub.history("a", &Filter::default(), usize::MAX);
    assert_eq!(kept.len(), 10);
    assert_eq!(kept[0].message, "20");
}

#[tokio::test]
async fn a_torn_last_record_is_skipped_and_later_lines_are_kept() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = open(tmp.path(), 100);
    hub.write("a", Source::App, "web.1", "one");
    hub.flush().await;
    drop(hub);
    let seg = std::fs::read_dir(tmp.path().join("a"))
        .expect("dir")
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .expect("a segment")
        .path();
    let mut body = std::fs::read(&seg).expect("read");
    body.extend_from_slice(b"{\"seq\":1,\"ti");
    std::fs::write(&seg, body).expect("tear");
    let hub = open(tmp.path(), 100);
    hub.write("a", Source::App, "web.1", "two");
    hub.flush().await;
    drop(hub);
    let hub = open(tmp.path(), 100);
    assert_eq!(
        messages(&hub.history("a", &Filter::default(), 10)),
        ["one", "two"]
    );
}

#[tokio::test]
async fn removing_an_app_deletes_its_history() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = open(tmp.path(), 100);
    hub.write("a", Source::App, "web.1", "secret");
    hub.flush().await;
    assert!(tmp.path().join("a").exists());
    hub.remove("a");
    hub.flush().await;
    assert!(!tmp.path().join("a").exists());
    drop(hub);
    let hub = open(tmp.path(), 100);
    assert!(hub.history("a", &Filter::default(), 10).is_empty());
}

#[tokio::test]
async fn a_full_disk_queue_drops_lines_from_disk_and_says_so() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = LogHub::open(HubConfig {
        dir: Some(tmp.path().to_path_buf()),
        disk_queue: 1,
        defaults: HistoryLimits {
            lines: 10_000,
            bytes: HISTORY_BYTES,
        },
        ..HubConfig::default()
    })
    .expect("open");
    for i in 0..5000 {
        hub.write("a", Source::App, "web.1", &format!("{i}"));
    }
    hub.report_pending_drops();
    // The tail and the memory history lose nothing.
    let all = hub.history("a", &Filter::default(), usize::MAX);
    assert!(all.iter().any(|l| l.message == "4999"));
    let reports: Vec<_> = all
        .iter()
        .filter(|l| l.dyno == "logplex" && l.message.starts_with("Error L10"))
        .collect();
    assert!(!reports.is_empty(), "no L10 report");
    assert!(reports[0].message.contains("not kept on disk"));
}

#[tokio::test]
async fn tail_sees_new_lines_and_drop_notices() {
    let hub = LogHub::new();
    hub.write("a", Source::App, "web.1", "before");
    let (history, mut sub) = hub.subscribe("a", Filter::default(), 10);
    assert_eq!(history.len(), 1);
    hub.write("a", Source::App, "web.1", "after");
    match sub.recv().await {
        Next::Line(l) => assert_eq!(l.message, "after"),
        other => panic!("expected a line, got {other:?}"),
    }
    for i in 0..LIVE_BUFFER + 5 {
        hub.write("a", Source::App, "web.1", &format!("{i}"));
    }
    assert!(matches!(sub.recv().await, Next::Dropped(5)));
}

#[test]
fn subscribe_after_resumes_without_repeats_or_gaps() {
    let hub = LogHub::new();
    hub.set_limits(
        "a",
        HistoryLimits {
            lines: 10,
            bytes: HISTORY_BYTES,
        },
    )
    .expect("limits");
    for i in 0..8 {
        hub.write("a", Source::App, "web.1", &format!("{i}"));
    }
    let (backlog, _sub) = hub.subscribe_after("a", Filter::default(), Some(4), 1);
    let seqs: Vec<u64> = backlog.lines.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, [5, 6, 7]);
    assert_eq!(backlog.missed, 0);
    for i in 8..20 {
        hub.write("a", Source::App, "web.1", &format!("{i}"));
    }
    // Lines 5..=9 are gone (only 10..=19 are kept): said, not hidden.
    let (backlog, _sub) = hub.subscribe_after("a", Filter::default(), Some(4), 1);
    assert_eq!(backlog.lines.first().map(|l| l.seq), Some(10));
    assert_eq!(backlog.missed, 5);
    // A reader that has everything gets nothing again.
    let (backlog, _sub) = hub.subscribe_after("a", Filter::default(), Some(19), 5);
    assert!(backlog.lines.is_empty());
}

#[test]
fn logfmt_quote_escapes_quotes_backslashes_and_line_breaks() {
    assert_eq!(logfmt_quote("plain"), "\"plain\"");
    assert_eq!(
        logfmt_quote("1.2.3.4\" at=info status=200"),
        "\"1.2.3.4\\\" at=info status=200\""
    );
    assert_eq!(logfmt_quote("a\\b\nc\r\u{1b}"), "\"a\\\\b\\nc\\r\\u{1b}\"");
    assert_eq!(
        unquote(&logfmt_quote("x\u{7}\"y")),
        Some(("x\u{7}\"y".into(), ""))
    );
}

/// Reads one quoted logfmt value from the start of `s`: the unescaped value and the rest,
/// or `None` if it is not a well-formed quoted value.
fn unquote(s: &str) -> Option<(String, &str)> {
    let mut rest = s.strip_prefix('"')?;
    let mut out = String::new();
    loop {
        let mut chars = rest.chars();
        let c = chars.next()?;
        rest = chars.as_str();
        match c {
            '"' => return Some((out, rest)),
            '\\' => {
                let mut chars = rest.chars();
                let e = chars.next()?;
                rest = chars.as_str();
                match e {
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    '"' | '\\' => out.push(e),
                    'u' => {
                        let (hex, after) = rest.strip_prefix('{')?.split_once('}')?;
                        out.push(char::from_u32(u32::from_str_radix(hex, 16).ok()?)?);
                        rest = after;
                    }
                    _ => return None,
                }
            }
            c => out.push(c),
        }
    }
}

proptest::proptest! {
    #[test]
    fn logfmt_quoted_values_never_end_early_and_round_trip(value in "\\PC*|.*|[\"\\\\ =\n\r\u{0}-\u{1f}\u{2028}a]*") {
        let quoted = logfmt_quote(&value);
        let breaks = ['\n', '\r', '\u{2028}', '\u{2029}'];
        proptest::prop_assert!(!quoted.contains(breaks), "a line break in {}", quoted);
        proptest::prop_assert!(!quoted.chars().any(char::is_control), "a control char in {}", quoted);
        // The first unescaped quote after the opening one is the closing one, at the end.
        let (back, rest) = unquote(&quoted).expect("well-formed");
        proptest::prop_assert_eq!(rest, "");
        proptest::prop_assert_eq!(back, value);
    }
}

#[tokio::test]
async fn closing_ends_every_tail() {
    let hub = LogHub::new();
    let (_, mut sub) = hub.subscribe("a", Filter::default(), 10);
    hub.close_tails();
    assert!(matches!(sub.recv().await, Next::Closed));
}

#[test]
fn a_clock_stepping_back_does_not_reorder_the_stream() {
    let hub = LogHub::new();
    let later = Utc::now();
    let earlier = later - chrono::Duration::seconds(5);
    hub.write_at("a", Source::App, "web.1", "first", later);
    hub.write_at("a", Source::App, "web.2", "second", earlier);
    let lines = hub.history("a", &Filter::default(), 10);
    assert_eq!(messages(&lines), ["first", "second"]);
    assert_eq!(lines[1].time, later);
}

#[tokio::test(flavor = "current_thread")]
async fn a_batcher_hands_its_lines_over_in_order_once_its_runtime_has_a_turn() {
    let hub = LogHub::new();
    let (_, mut tail) = hub.subscribe("a", Filter::default(), 10);
    let batcher = hub.batcher();
    for i in 0..3 {
        batcher.write("a".into(), Source::Heroku, "router", format!("line {i}"));
    }
    // Nothing yet: the flush waits for this task to give the runtime a turn.
    assert!(hub.history("a", &Filter::default(), 10).is_empty());
    for i in 0..3 {
        match tail.recv().await {
            Next::Line(l) => assert_eq!(
                (l.message.as_str(), l.dyno.as_str()),
                (format!("line {i}").as_str(), "router")
            ),
            other => panic!("expected a line, got {other:?}"),
        }
    }
    let kept = hub.history("a", &Filter::default(), 10);
    assert_eq!(messages(&kept), ["line 0", "line 1", "line 2"]);
    assert_eq!(kept.iter().map(|l| l.seq).collect::<Vec<_>>(), [0, 1, 2]);
}

#[test]
fn a_batcher_outside_a_runtime_or_full_writes_at_once() {
    let hub = LogHub::new();
    let batcher = hub.batcher();
    batcher.write("a".into(), Source::Heroku, "router", "no runtime".into());
    assert_eq!(
        messages(&hub.history("a", &Filter::default(), 10)),
        ["no runtime"]
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        for i in 0..BATCH_LINES {
            batcher.write("b".into(), Source::Heroku, "router", format!("{i}"));
        }
        // The batch filled up: handed over without waiting for a turn.
        assert_eq!(
            hub.history("b", &Filter::default(), 1000).len(),
            BATCH_LINES
        );
        batcher.write("b".into(), Source::Heroku, "router", "long ".repeat(3000));
    });
    // The runtime went away before its scheduled flush ran: dropping it flushed the line
    // (split like any long message).
    drop(runtime);
    let b = hub.history("b", &Filter::default(), 1000);
    assert_eq!(b.len(), BATCH_LINES + 2);
    assert_eq!(b[BATCH_LINES].message.len(), MAX_LINE_BYTES);
}

#[tokio::test(flavor = "current_thread")]
async fn a_batch_of_several_apps_lines_reaches_each_apps_stream_and_disk_in_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let hub = open(dir.path(), 100);
    hub.write("b", Source::App, "web.1", "b existed before the batch");
    let batcher = hub.batcher();
    // Runs of one app (the lines after the first go to the stream already found), apps
    // interleaved, and an app whose stream the batch makes.
    let apps = ["a", "a", "b", "a", "c", "c", "b", "b", "a"];
    for (i, app) in apps.iter().enumerate() {
        batcher.write(
            app.to_string(),
            Source::Heroku,
            "router",
            format!("{app} {i}"),
        );
    }
    batcher.flush();
    hub.flush().await;
    let wanted = |app: &str| -> Vec<String> {
        apps.iter()
            .enumerate()
            .filter(|(_, a)| **a == app)
            .map(|(i, a)| format!("{a} {i}"))
            .collect()
    };
    let mut b = vec!["b existed before the batch".to_string()];
    b.extend(wanted("b"));
    drop(hub);
    // Reopened: what the hub kept is what reached the disk.
    let hub = open(dir.path(), 100);
    for (app, lines) in [("a", wanted("a")), ("b", b), ("c", wanted("c"))] {
        let kept = hub.history(app, &Filter::default(), 100);
        assert_eq!(messages(&kept), lines, "app {app}");
        let seqs: Vec<u64> = kept.iter().map(|l| l.seq).collect();
        assert_eq!(
            seqs,
            (0..lines.len() as u64).collect::<Vec<_>>(),
            "app {app}"
        );
    }
}
