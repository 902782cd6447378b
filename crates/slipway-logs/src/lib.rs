//! Per-app log streams in Logplex's model.
//!
//! Every component (router, dyno manager, build, API) writes [`LogLine`]s to the [`LogHub`]
//! under the app's id. Each app keeps the last [`HISTORY_LINES`] lines and a broadcast channel
//! for `--tail`. Writers never block: a reader that falls behind loses lines and is told how
//! many (see [`Subscription::recv`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::sync::broadcast;

/// Lines of history kept per app (Heroku keeps 1,500).
pub const HISTORY_LINES: usize = 1500;
/// Longer messages are split into several lines (Logplex splits at 10,000 bytes).
pub const MAX_LINE_BYTES: usize = 10_000;
const LIVE_BUFFER: usize = 1024;

/// Who wrote a line: `app` (the app's own output, and `app[api]` for platform actions the
/// user took) or `heroku` (the platform: router and dyno manager), as in Heroku's logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    App,
    Heroku,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::App => "app",
            Source::Heroku => "heroku",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogLine {
    pub time: DateTime<Utc>,
    pub source: Source,
    /// `web.1`, `router`, `api`, `run.1234`...
    pub dyno: String,
    pub message: String,
}

impl LogLine {
    /// `2013-02-11T15:19:10.123456+00:00 app[web.1]: message`
    pub fn format(&self) -> String {
        format!(
            "{} {}[{}]: {}",
            self.time.to_rfc3339_opts(SecondsFormat::Micros, false),
            self.source.as_str(),
            self.dyno,
            self.message
        )
    }
}

/// Which lines a reader wants: `--dyno web.1` (or a type prefix such as `web`) and `--source`.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub dyno: Option<String>,
    pub source: Option<String>,
}

impl Filter {
    pub fn matches(&self, line: &LogLine) -> bool {
        let dyno_ok = match &self.dyno {
            None => true,
            Some(d) if d.contains('.') || d == "router" || d == "api" => line.dyno == *d,
            Some(d) => line.dyno == *d || line.dyno.starts_with(&format!("{d}.")),
        };
        let source_ok = self
            .source
            .as_deref()
            .is_none_or(|s| s == line.source.as_str());
        dyno_ok && source_ok
    }
}

struct Stream {
    history: VecDeque<LogLine>,
    live: broadcast::Sender<LogLine>,
}

impl Stream {
    fn new() -> Self {
        Self {
            history: VecDeque::with_capacity(64),
            live: broadcast::channel(LIVE_BUFFER).0,
        }
    }

    /// The last `lines` lines matching `filter`, oldest first.
    fn recent(&self, filter: &Filter, lines: usize) -> Vec<LogLine> {
        let mut out: Vec<LogLine> = self
            .history
            .iter()
            .rev()
            .filter(|l| filter.matches(l))
            .take(lines)
            .cloned()
            .collect();
        out.reverse();
        out
    }
}

/// All apps' log streams. Cheap to clone.
#[derive(Clone, Default)]
pub struct LogHub {
    streams: Arc<Mutex<HashMap<String, Stream>>>,
}

impl LogHub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one message, split into several lines where it is longer than [`MAX_LINE_BYTES`].
    pub fn write(&self, app_id: &str, source: Source, dyno: &str, message: &str) {
        let time = Utc::now();
        let mut streams = self.lock();
        let stream = streams
            .entry(app_id.to_string())
            .or_insert_with(Stream::new);
        for part in split_message(message) {
            let line = LogLine {
                time,
                source,
                dyno: dyno.to_string(),
                message: part.to_string(),
            };
            if stream.history.len() == HISTORY_LINES {
                stream.history.pop_front();
            }
            stream.history.push_back(line.clone());
            // No receivers is fine: nobody is tailing.
            let _ = stream.live.send(line);
        }
    }

    /// The last `lines` lines that match `filter`, oldest first.
    pub fn history(&self, app_id: &str, filter: &Filter, lines: usize) -> Vec<LogLine> {
        match self.lock().get(app_id) {
            Some(stream) => stream.recent(filter, lines),
            None => Vec::new(),
        }
    }

    /// History and a live subscription taken atomically, so no line falls between them.
    pub fn subscribe(
        &self,
        app_id: &str,
        filter: Filter,
        lines: usize,
    ) -> (Vec<LogLine>, Subscription) {
        let mut streams = self.lock();
        let stream = streams
            .entry(app_id.to_string())
            .or_insert_with(Stream::new);
        let rx = stream.live.subscribe();
        let history = stream.recent(&filter, lines);
        (history, Subscription { rx, filter })
    }

    /// Forgets an app's stream (when the app is destroyed). Tail readers see the end.
    pub fn remove(&self, app_id: &str) {
        self.lock().remove(app_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Stream>> {
        // A panic while holding this lock cannot leave the map inconsistent: recover it.
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a tail reader receives next.
#[derive(Debug)]
pub enum Next {
    Line(LogLine),
    /// The reader was too slow and this many lines were dropped for it.
    Dropped(u64),
    Closed,
}

pub struct Subscription {
    rx: broadcast::Receiver<LogLine>,
    filter: Filter,
}

impl Subscription {
    pub async fn recv(&mut self) -> Next {
        loop {
            match self.rx.recv().await {
                Ok(line) if self.filter.matches(&line) => return Next::Line(line),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => return Next::Dropped(n),
                Err(broadcast::error::RecvError::Closed) => return Next::Closed,
            }
        }
    }
}

/// A logfmt value in double quotes that no input can break out of: `"` and `\` are
/// backslash-escaped, newlines and other control characters (and the Unicode line separators)
/// are written as `\n`, `\r`, `\t` or `\u{..}`. Use it for every value a client or user
/// supplied (paths, hosts, headers) before putting it in a `key=value` log line, so nobody can
/// forge fields such as `status=` that drains and alerts trust.
pub fn logfmt_quote(value: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn split_message(message: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = message;
    while rest.len() > MAX_LINE_BYTES {
        let mut cut = MAX_LINE_BYTES;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        parts.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    parts.push(rest);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_heroku() {
        let line = LogLine {
            time: DateTime::parse_from_rfc3339("2013-02-11T15:19:10.123456Z")
                .expect("valid time")
                .with_timezone(&Utc),
            source: Source::App,
            dyno: "web.1".into(),
            message: "hello".into(),
        };
        assert_eq!(
            line.format(),
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
        let all = hub.history("a", &Filter::default(), usize::MAX);
        assert_eq!(all.len(), HISTORY_LINES);
        assert_eq!(all.last().map(|l| l.message.as_str()), Some("working"));
        let router = Filter {
            dyno: Some("router".into()),
            source: None,
        };
        assert_eq!(hub.history("a", &router, 10).len(), 1);
        let heroku = Filter {
            dyno: None,
            source: Some("heroku".into()),
        };
        assert_eq!(hub.history("a", &heroku, 10)[0].message, "routed");
        let web = Filter {
            dyno: Some("web".into()),
            source: None,
        };
        assert_eq!(
            hub.history("a", &web, 2)[1].message,
            format!("line {}", HISTORY_LINES + 9)
        );
        assert!(hub.history("other", &Filter::default(), 10).is_empty());
    }

    #[test]
    fn splits_long_messages_on_char_boundaries() {
        let hub = LogHub::new();
        let long = "é".repeat(MAX_LINE_BYTES); // 2 bytes each
        hub.write("a", Source::App, "web.1", &long);
        let lines = hub.history("a", &Filter::default(), 10);
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| l.message.len() <= MAX_LINE_BYTES));
        assert_eq!(lines.concat_messages(), long);
    }

    trait Concat {
        fn concat_messages(&self) -> String;
    }
    impl Concat for Vec<LogLine> {
        fn concat_messages(&self) -> String {
            self.iter().map(|l| l.message.as_str()).collect()
        }
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
}
