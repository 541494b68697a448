package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// migrations is the schema, in order: migrations[i] takes the database from
// version i to version i+1. Never edit one that has shipped; append a new one.
var migrations = []string{
	// 1: devices.
	`CREATE TABLE devices (
		id         TEXT PRIMARY KEY,
		model      TEXT NOT NULL DEFAULT '',
		version    TEXT NOT NULL DEFAULT '',
		tags       TEXT NOT NULL DEFAULT '{}', -- JSON object
		first_seen TEXT NOT NULL,
		last_seen  TEXT NOT NULL,
		online     INTEGER NOT NULL DEFAULT 0
	);
	CREATE INDEX devices_model_version ON devices(model, version);`,

	// 2: firmware; the image is DataDir/firmware/<sha256>, shared by rows
	// with the same bytes.
	`CREATE TABLE firmware (
		id         TEXT PRIMARY KEY,
		name       TEXT NOT NULL,
		version    TEXT NOT NULL,
		model      TEXT NOT NULL DEFAULT '',
		size       INTEGER NOT NULL,
		sha256     TEXT NOT NULL,
		created_at TEXT NOT NULL
	);
	CREATE INDEX firmware_sha256 ON firmware(sha256);`,

	// 3: updates and per-device progress.
	`CREATE TABLE updates (
		id          TEXT PRIMARY KEY,
		firmware_id TEXT NOT NULL REFERENCES firmware(id),
		selector    TEXT NOT NULL DEFAULT '{}', -- JSON fleet.Selector
		policy      TEXT NOT NULL DEFAULT '{}', -- JSON fleet.Policy
		state       TEXT NOT NULL,
		created_at  TEXT NOT NULL,
		started_at  TEXT,
		finished_at TEXT
	);
	CREATE INDEX updates_state ON updates(state);
	CREATE TABLE progress (
		update_id   TEXT NOT NULL REFERENCES updates(id) ON DELETE CASCADE,
		device_id   TEXT NOT NULL,
		state       TEXT NOT NULL,
		offset      INTEGER NOT NULL DEFAULT 0,
		attempts    INTEGER NOT NULL DEFAULT 0,
		reason      TEXT NOT NULL DEFAULT '',
		handle      INTEGER NOT NULL DEFAULT 0,
		started_at  TEXT,
		finished_at TEXT,
		updated_at  TEXT NOT NULL,
		PRIMARY KEY (update_id, device_id)
	) WITHOUT ROWID;
	CREATE INDEX progress_update_state ON progress(update_id, state);`,

	// 4: the event log; seq is assigned by the caller and grows.
	`CREATE TABLE events (
		seq        INTEGER PRIMARY KEY,
		time       TEXT NOT NULL,
		type       TEXT NOT NULL,
		update_id  TEXT NOT NULL DEFAULT '',
		device_id  TEXT NOT NULL DEFAULT '',
		from_state TEXT NOT NULL DEFAULT '',
		state      TEXT NOT NULL DEFAULT '',
		reason     TEXT NOT NULL DEFAULT '',
		offset     INTEGER NOT NULL DEFAULT 0,
		attempt    INTEGER NOT NULL DEFAULT 0
	);
	CREATE INDEX events_update_seq ON events(update_id, seq);`,

	// 5: transfer counters of an update, kept when it ends.
	`ALTER TABLE updates ADD COLUMN bytes_sent INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE updates ADD COLUMN bytes_acked INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE updates ADD COLUMN resends INTEGER NOT NULL DEFAULT 0;`,

	// 6: the rollout phase an event belongs to (0: none).
	`ALTER TABLE events ADD COLUMN phase INTEGER NOT NULL DEFAULT 0;`,

	// 7: MQTT accounts (credentials.go).
	migrationCredentials,

	// 8: device indexes that end in id, so that a filtered page ordered by
	// id (?model=, ?version=, ?after=) reads its rows in order instead of
	// sorting every match; and the event log's retention watermark: every
	// event with seq <= pruned_through was deleted by retention.
	`DROP INDEX devices_model_version;
	CREATE INDEX devices_model_version ON devices(model, version, id);
	CREATE INDEX devices_model_id ON devices(model, id);
	CREATE INDEX devices_version_id ON devices(version, id);
	CREATE TABLE event_log (
		id             INTEGER PRIMARY KEY CHECK (id = 1),
		pruned_through INTEGER NOT NULL DEFAULT 0
	);
	INSERT INTO event_log (id, pruned_through) VALUES (1, 0);`,

	// 9: the firmware's signature (standard base64, '' = unsigned) and its
	// signed downgrade permission.
	`ALTER TABLE firmware ADD COLUMN signature TEXT NOT NULL DEFAULT '';
	ALTER TABLE firmware ADD COLUMN allow_downgrade INTEGER NOT NULL DEFAULT 0;`,

	// 10: HTTP API tokens (apitokens.go).
	migrationAPITokens,
	// 11: who created an update (the API token's name), and the indexes a
	// device's history reads: its progress rows and its events.
	`ALTER TABLE updates ADD COLUMN created_by TEXT NOT NULL DEFAULT '';
	CREATE INDEX progress_device ON progress(device_id);
	CREATE INDEX events_device_seq ON events(device_id, seq);`,

	// 12: the orchestrators that served this database at an external
	// broker, one row per start; the newest epoch fences older ones
	// (standby.go).
	`CREATE TABLE claims (
		epoch      INTEGER PRIMARY KEY,
		instance   TEXT NOT NULL,
		claimed_at TEXT NOT NULL
	);`,

	// 13: payloads (payloads.go): what a device runs and decodes, the
	// payload of each device's current attempt, and the encoded copies
	// kept of each image.
	migrationPayloads,
}

// schemaVersion returns the highest applied migration, 0 for a new database.
func schemaVersion(ctx context.Context, db *sql.DB) (int, error) {
	var v int
	err := db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v)
	if err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return v, nil
}

// migrate applies the migrations past the database's version, each in its own
// transaction together with its schema_migrations row.
func migrate(ctx context.Context, db *sql.DB, migs []string) error {
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INTEGER PRIMARY KEY,
		applied_at TEXT NOT NULL
	)`); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	cur, err := schemaVersion(ctx, db)
	if err != nil {
		return err
	}
	if cur > len(migs) {
		return fmt.Errorf("database schema version %d is newer than this program (%d)", cur, len(migs))
	}
	for v := cur + 1; v <= len(migs); v++ {
		if err := applyMigration(ctx, db, v, migs[v-1]); err != nil {
			return err
		}
	}
	return nil
}

func applyMigration(ctx context.Context, db *sql.DB, version int, stmt string) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migration %d: %w", version, err)
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	if _, err := tx.ExecContext(ctx, stmt); err != nil {
		return fmt.Errorf("migration %d: %w", version, err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations(version, applied_at) VALUES (?, ?)`,
		version, fmtTime(time.Now())); err != nil {
		return fmt.Errorf("migration %d: record: %w", version, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migration %d: commit: %w", version, err)
	}
	return nil
}
