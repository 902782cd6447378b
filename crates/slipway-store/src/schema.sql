CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    sha256 TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS apps (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    owner_id TEXT NOT NULL REFERENCES users(id),
    maintenance INTEGER NOT NULL DEFAULT 0,
    config TEXT NOT NULL DEFAULT '{}',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    released_at BIGINT
);
CREATE TABLE IF NOT EXISTS slugs (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    commit_sha TEXT NOT NULL,
    checksum TEXT NOT NULL,
    size BIGINT NOT NULL,
    path TEXT NOT NULL,
    process_types TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS builds (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    user_id TEXT NOT NULL,
    status TEXT NOT NULL,
    commit_sha TEXT NOT NULL,
    slug_id TEXT,
    release_id TEXT,
    output TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS releases (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    version BIGINT NOT NULL,
    description TEXT NOT NULL,
    slug_id TEXT,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    user_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (app_id, version)
);
CREATE TABLE IF NOT EXISTS release_outputs (
    release_id TEXT PRIMARY KEY REFERENCES releases(id) ON DELETE CASCADE,
    output TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS formation (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    process_type TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    size TEXT NOT NULL,
    command TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (app_id, process_type)
);
CREATE TABLE IF NOT EXISTS dynos (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    process_type TEXT NOT NULL,
    command TEXT NOT NULL,
    release_version BIGINT NOT NULL,
    state TEXT NOT NULL,
    pid BIGINT,
    port BIGINT,
    dir TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS buildpack_installations (
    app_id TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    ordinal BIGINT NOT NULL,
    url TEXT NOT NULL,
    PRIMARY KEY (app_id, ordinal)
);
CREATE TABLE IF NOT EXISTS log_drains (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    url TEXT NOT NULL,
    token TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (app_id, url)
);
CREATE TABLE IF NOT EXISTS release_store (
    name TEXT NOT NULL,
    tag TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    commit_sha TEXT NOT NULL DEFAULT '',
    metadata TEXT NOT NULL DEFAULT '{}',
    path TEXT NOT NULL,
    built_at BIGINT NOT NULL,
    PRIMARY KEY (name, tag)
);
CREATE TABLE IF NOT EXISTS host_targets (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    env TEXT NOT NULL DEFAULT '{}',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS target_current (
    target TEXT NOT NULL REFERENCES host_targets(name) ON DELETE CASCADE,
    host TEXT NOT NULL,
    store_name TEXT NOT NULL,
    tag TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (target, host)
);
CREATE TABLE IF NOT EXISTS domains (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    hostname TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS https_redirects (
    app_id TEXT PRIMARY KEY REFERENCES apps(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS certs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    app_id TEXT REFERENCES apps(id) ON DELETE CASCADE,
    source TEXT NOT NULL,
    certificate_chain TEXT NOT NULL,
    domains TEXT NOT NULL,
    issuer TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS deploys (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    number BIGINT NOT NULL,
    source TEXT NOT NULL,
    user_id TEXT NOT NULL,
    status TEXT NOT NULL,
    options TEXT NOT NULL DEFAULT '{}',
    previous_version BIGINT,
    release_version BIGINT,
    rollback_version BIGINT,
    maintenance_on INTEGER NOT NULL DEFAULT 0,
    failure TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    UNIQUE (app_id, number)
);
CREATE TABLE IF NOT EXISTS deploy_steps (
    deploy_id TEXT NOT NULL REFERENCES deploys(id) ON DELETE CASCADE,
    ordinal BIGINT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    output TEXT NOT NULL DEFAULT '',
    started_at BIGINT,
    finished_at BIGINT,
    PRIMARY KEY (deploy_id, ordinal)
);
CREATE TABLE IF NOT EXISTS deploy_webhooks (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    url TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (app_id, url)
);
CREATE TABLE IF NOT EXISTS deploy_secrets (
    app_id TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (app_id, name)
);
-- Pipelines (issue 10; crates/slipway-store/src/pipelines.rs).
CREATE TABLE IF NOT EXISTS pipelines (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    next_build BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS pipeline_stages (
    id TEXT PRIMARY KEY,
    pipeline_id TEXT NOT NULL REFERENCES pipelines(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    position BIGINT NOT NULL,
    strategy TEXT NOT NULL,
    branch TEXT,
    watch_secs BIGINT NOT NULL,
    env TEXT NOT NULL DEFAULT '{}',
    current_build_id TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (pipeline_id, name)
);
CREATE TABLE IF NOT EXISTS pipeline_targets (
    stage_id TEXT NOT NULL REFERENCES pipeline_stages(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    app_id TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (stage_id, app_id)
);
CREATE TABLE IF NOT EXISTS pipeline_host_targets (
    stage_id TEXT NOT NULL REFERENCES pipeline_stages(id) ON DELETE CASCADE,
    target TEXT NOT NULL REFERENCES host_targets(name) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (stage_id, target)
);
CREATE TABLE IF NOT EXISTS target_deploys (
    id TEXT PRIMARY KEY,
    target TEXT NOT NULL REFERENCES host_targets(name) ON DELETE CASCADE,
    number BIGINT NOT NULL,
    store_name TEXT NOT NULL,
    tag TEXT NOT NULL,
    user_id TEXT NOT NULL,
    stage TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    failure TEXT NOT NULL DEFAULT '',
    report TEXT NOT NULL DEFAULT '{}',
    created_at BIGINT NOT NULL,
    finished_at BIGINT,
    UNIQUE (target, number)
);
CREATE TABLE IF NOT EXISTS pipeline_builds (
    id TEXT PRIMARY KEY,
    pipeline_id TEXT NOT NULL REFERENCES pipelines(id) ON DELETE CASCADE,
    number BIGINT NOT NULL,
    branch TEXT NOT NULL,
    commit_sha TEXT NOT NULL,
    message TEXT NOT NULL,
    user_id TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    slug_path TEXT,
    slug_checksum TEXT,
    slug_size BIGINT,
    process_types TEXT NOT NULL DEFAULT '{}',
    output TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    built_at BIGINT,
    finished_at BIGINT,
    UNIQUE (pipeline_id, number)
);
CREATE TABLE IF NOT EXISTS pipeline_deploys (
    id TEXT PRIMARY KEY,
    pipeline_id TEXT NOT NULL REFERENCES pipelines(id) ON DELETE CASCADE,
    build_id TEXT NOT NULL REFERENCES pipeline_builds(id) ON DELETE CASCADE,
    stage_id TEXT NOT NULL REFERENCES pipeline_stages(id) ON DELETE CASCADE,
    origin TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
