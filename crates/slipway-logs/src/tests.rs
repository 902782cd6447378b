//! Unit tests of the hub: format, filters, ordering, history on disk, tails and drains.

use super::*;

mod drains;
mod hub;
mod store;
