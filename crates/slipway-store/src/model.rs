//! Rows of the state database, as plain structs.

use std::collections::BTreeMap;

use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use crate::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub email: String,
    pub created_at: i64,
}

impl User {
    pub(crate) fn from_row(r: &SqliteRow) -> Self {
        Self {
            id: r.get("id"),
            email: r.get("email"),
            created_at: r.get("created_at"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    pub id: String,
    pub name: String,
    pub owner_id: String,
    pub maintenance: bool,
    pub config: BTreeMap<String, String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub released_at: Option<i64>,
}

impl App {
    pub(crate) fn from_row(r: &SqliteRow) -> Result<Self, StoreError> {
        let config: String = r.get("config");
        Ok(Self {
            id: r.get("id"),
            name: r.get("name"),
            owner_id: r.get("owner_id"),
            maintenance: r.get::<i64, _>("maintenance") != 0,
            config: serde_json::from_str(&config)?,
            created_at: r.get("created_at"),
            updated_at: r.get("updated_at"),
            released_at: r.get("released_at"),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildStatus {
    Pending,
    Succeeded,
    Failed,
}

impl BuildStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildStatus::Pending => "pending",
            BuildStatus::Succeeded => "succeeded",
            BuildStatus::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "succeeded" => BuildStatus::Succeeded,
            "failed" => BuildStatus::Failed,
            _ => BuildStatus::Pending,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    pub id: String,
    pub app_id: String,
    pub user_id: String,
    pub status: BuildStatus,
    pub commit_sha: String,
    pub slug_id: Option<String>,
    pub release_id: Option<String>,
    pub output: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Build {
    pub(crate) fn from_row(r: &SqliteRow) -> Result<Self, StoreError> {
        Ok(Self {
            id: r.get("id"),
            app_id: r.get("app_id"),
            user_id: r.get("user_id"),
            status: BuildStatus::parse(r.get("status")),
            commit_sha: r.get("commit_sha"),
            slug_id: r.get("slug_id"),
            release_id: r.get("release_id"),
            output: r.get("output"),
            created_at: r.get("created_at"),
            updated_at: r.get("updated_at"),
        })
    }
}

/// What a build hands to [`crate::Store::create_slug`].
#[derive(Debug, Clone)]
pub struct NewSlug {
    pub app_id: String,
    pub commit_sha: String,
    /// `SHA256:<hex>`
    pub checksum: String,
    pub size: i64,
    pub path: String,
    pub process_types: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slug {
    pub id: String,
    pub app_id: String,
    pub commit_sha: String,
    pub checksum: String,
    pub size: i64,
    pub path: String,
    pub process_types: BTreeMap<String, String>,
    pub created_at: i64,
}

impl Slug {
    pub(crate) fn from_row(r: &SqliteRow) -> Result<Self, StoreError> {
        let types: String = r.get("process_types");
        Ok(Self {
            id: r.get("id"),
            app_id: r.get("app_id"),
            commit_sha: r.get("commit_sha"),
            checksum: r.get("checksum"),
            size: r.get("size"),
            path: r.get("path"),
            process_types: serde_json::from_str(&types)?,
            created_at: r.get("created_at"),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub id: String,
    pub app_id: String,
    pub version: i64,
    pub description: String,
    pub slug_id: Option<String>,
    pub config: BTreeMap<String, String>,
    pub status: String,
    pub user_id: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Release {
    pub(crate) fn from_row(r: &SqliteRow) -> Result<Self, StoreError> {
        let config: String = r.get("config");
        Ok(Self {
            id: r.get("id"),
            app_id: r.get("app_id"),
            version: r.get("version"),
            description: r.get("description"),
            slug_id: r.get("slug_id"),
            config: serde_json::from_str(&config)?,
            status: r.get("status"),
            user_id: r.get("user_id"),
            created_at: r.get("created_at"),
            updated_at: r.get("updated_at"),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Formation {
    pub id: String,
    pub app_id: String,
    pub process_type: String,
    pub quantity: i64,
    pub size: String,
    pub command: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Formation {
    pub(crate) fn from_row(r: &SqliteRow) -> Self {
        Self {
            id: r.get("id"),
            app_id: r.get("app_id"),
            process_type: r.get("process_type"),
            quantity: r.get("quantity"),
            size: r.get("size"),
            command: r.get("command"),
            created_at: r.get("created_at"),
            updated_at: r.get("updated_at"),
        }
    }
}

/// A dyno's lifecycle state, as Heroku names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DynoState {
    Starting,
    Up,
    Crashed,
    Down,
}

impl DynoState {
    pub fn as_str(self) -> &'static str {
        match self {
            DynoState::Starting => "starting",
            DynoState::Up => "up",
            DynoState::Crashed => "crashed",
            DynoState::Down => "down",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "starting" => DynoState::Starting,
            "up" => DynoState::Up,
            "crashed" => DynoState::Crashed,
            _ => DynoState::Down,
        }
    }
}

/// What the dyno manager keeps about each dyno: enough to find its process again (pid, port,
/// release, directory) after the server restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynoRecord {
    pub id: String,
    pub app_id: String,
    pub name: String,
    pub process_type: String,
    pub command: String,
    pub release_version: i64,
    pub state: DynoState,
    pub pid: Option<i64>,
    pub port: Option<i64>,
    pub dir: String,
    pub created_at: i64,
}

impl DynoRecord {
    pub(crate) fn from_row(r: &SqliteRow) -> Self {
        Self {
            id: r.get("id"),
            app_id: r.get("app_id"),
            name: r.get("name"),
            process_type: r.get("process_type"),
            command: r.get("command"),
            release_version: r.get("release_version"),
            state: DynoState::parse(r.get("state")),
            pid: r.get("pid"),
            port: r.get("port"),
            dir: r.get("dir"),
            created_at: r.get("created_at"),
        }
    }
}
