//! A dyno's lifecycle: the states it goes through and the only transitions between them.
//!
//! ```text
//!             boot ok                 stop            stopped
//!  starting ───────────> up ─────────────> stopping ──────────> down
//!     │  ^                │                  ^   ^
//!     │  │ restart        │ exited / R10/R15 │   │ stop
//!     │  └──── crashed <──┘                  │   │
//!     └──────────┴───────────────────────────┘   │
//!                └───────────────────────────────┘
//! ```
//!
//! The supervisor changes a dyno's state only through [`Lifecycle::apply`]; each guard
//! (`can_*`) says which states an event is legal in, as youki's container status does. The
//! `State changed from X to Y` lines in the app's log are printed from these transitions, in
//! Heroku's vocabulary ([`DynoState`]): `stopping` is internal and shows as the state the dyno
//! was in when the stop began.

use crate::record::DynoState;

/// Where a dyno is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Its filesystem is being prepared, or its process started but (web) has not bound `PORT`.
    Starting,
    /// Running (and, for web dynos, accepting connections on `PORT`).
    Up,
    /// Its process exited (or was killed: R10, R15); it is restarted after a delay.
    Crashed,
    /// Asked to stop: SIGTERM sent, SIGKILL after the stop timeout. `from` is the state it had.
    Stopping { from: DynoState },
    /// Stopped for good; the supervisor is finishing.
    Down,
}

/// What happens to a dyno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Started (workers) or bound `PORT` (web).
    Booted,
    /// Its process exited, or could not be started, or was killed by the platform.
    Exited,
    /// Restarted after a crash.
    Restart,
    /// A stop was requested.
    Stop,
    /// Its processes are gone after a stop.
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a dyno cannot go through {event:?} while {from:?}")]
pub struct InvalidTransition {
    pub from: Lifecycle,
    pub event: Event,
}

impl Lifecycle {
    pub fn can_boot(self) -> bool {
        matches!(self, Lifecycle::Starting)
    }

    pub fn can_exit(self) -> bool {
        matches!(self, Lifecycle::Starting | Lifecycle::Up)
    }

    pub fn can_restart(self) -> bool {
        matches!(self, Lifecycle::Crashed)
    }

    pub fn can_stop(self) -> bool {
        matches!(
            self,
            Lifecycle::Starting | Lifecycle::Up | Lifecycle::Crashed
        )
    }

    pub fn can_finish_stopping(self) -> bool {
        matches!(self, Lifecycle::Stopping { .. })
    }

    /// The state after `event`, or why `event` cannot happen now.
    pub fn apply(self, event: Event) -> Result<Lifecycle, InvalidTransition> {
        let legal = match event {
            Event::Booted => self.can_boot(),
            Event::Exited => self.can_exit(),
            Event::Restart => self.can_restart(),
            Event::Stop => self.can_stop(),
            Event::Stopped => self.can_finish_stopping(),
        };
        if !legal {
            return Err(InvalidTransition { from: self, event });
        }
        Ok(match event {
            Event::Booted => Lifecycle::Up,
            Event::Exited => Lifecycle::Crashed,
            Event::Restart => Lifecycle::Starting,
            Event::Stop => Lifecycle::Stopping {
                from: self.public(),
            },
            Event::Stopped => Lifecycle::Down,
        })
    }

    /// The state as Heroku names it (in `ps`, the API and the log lines).
    pub fn public(self) -> DynoState {
        match self {
            Lifecycle::Starting => DynoState::Starting,
            Lifecycle::Up => DynoState::Up,
            Lifecycle::Crashed => DynoState::Crashed,
            Lifecycle::Stopping { from } => from,
            Lifecycle::Down => DynoState::Down,
        }
    }

    pub fn is_stopping_or_down(self) -> bool {
        matches!(self, Lifecycle::Stopping { .. } | Lifecycle::Down)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usual_life_of_a_web_dyno() {
        let mut s = Lifecycle::Starting;
        for (event, public) in [
            (Event::Booted, DynoState::Up),
            (Event::Exited, DynoState::Crashed),
            (Event::Restart, DynoState::Starting),
            (Event::Booted, DynoState::Up),
            (Event::Stop, DynoState::Up),
            (Event::Stopped, DynoState::Down),
        ] {
            s = s.apply(event).expect("legal transition");
            assert_eq!(s.public(), public, "after {event:?}");
        }
        assert_eq!(s, Lifecycle::Down);
    }

    #[test]
    fn illegal_transitions_are_refused() {
        let cases = [
            (Lifecycle::Up, Event::Booted),
            (Lifecycle::Up, Event::Restart),
            (Lifecycle::Crashed, Event::Booted),
            (Lifecycle::Crashed, Event::Exited),
            (Lifecycle::Down, Event::Restart),
            (Lifecycle::Down, Event::Stop),
            (Lifecycle::Starting, Event::Stopped),
            (
                Lifecycle::Stopping {
                    from: DynoState::Up,
                },
                Event::Booted,
            ),
        ];
        for (from, event) in cases {
            assert_eq!(
                from.apply(event),
                Err(InvalidTransition { from, event }),
                "{from:?} + {event:?}"
            );
        }
    }

    #[test]
    fn a_crashed_dyno_can_be_stopped_and_says_so() {
        let s = Lifecycle::Crashed.apply(Event::Stop).expect("stop");
        assert_eq!(s.public(), DynoState::Crashed);
        assert_eq!(s.apply(Event::Stopped), Ok(Lifecycle::Down));
    }
}
