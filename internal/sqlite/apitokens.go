package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/flotaio/flota/internal/fleet"
)

// migrationAPITokens is migration 10: HTTP API tokens made through the API
// (the token file's are not here). hash is the hex SHA-256 of the token;
// tokens are never stored. A revoked token's row is deleted, so that its
// name can be used again.
const migrationAPITokens = `CREATE TABLE api_tokens (
		name         TEXT PRIMARY KEY,
		role         TEXT NOT NULL,          -- read or admin
		hash         TEXT NOT NULL UNIQUE,
		created_at   TEXT NOT NULL,
		expires_at   TEXT,
		last_used_at TEXT
	);`

// AddAPIToken stores t, unless its name is taken (fleet.ErrTokenExists) or
// the database holds fleet.MaxAPITokens tokens already
// (fleet.ErrTooManyTokens). CreatedAt is set to now when zero.
func (s *Store) AddAPIToken(ctx context.Context, t fleet.APIToken) error {
	if t.CreatedAt.IsZero() {
		t.CreatedAt = time.Now()
	}
	err := s.doSync(ctx, func() error {
		tx, err := s.writer.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer rollback(tx) //nolint:errcheck // no-op after Commit
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM api_tokens`).Scan(&n); err != nil {
			return err
		}
		if n >= fleet.MaxAPITokens {
			return fleet.Errorf(fleet.ErrTooManyTokens, "the database holds %d tokens, the most it keeps; revoke one first", n)
		}
		res, err := tx.ExecContext(ctx, `INSERT INTO api_tokens(name, role, hash, created_at, expires_at)
			VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
			t.Name, t.Role, t.Hash, fmtTime(t.CreatedAt), fmtTimePtr(t.ExpiresAt))
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fleet.Errorf(fleet.ErrTokenExists, "%s", t.Name)
		}
		if err := tx.Commit(); err != nil {
			return err
		}
		s.stats.transactions.Add(1)
		s.stats.rows.Add(1)
		return nil
	})
	if err != nil {
		return fmt.Errorf("add api token: %w", err)
	}
	return nil
}

// DeleteAPIToken deletes token name and returns it, or
// fleet.ErrTokenNotFound.
func (s *Store) DeleteAPIToken(ctx context.Context, name string) (fleet.APIToken, error) {
	var t fleet.APIToken
	err := s.doSync(ctx, func() error {
		var err error
		t, err = scanAPIToken(s.writer.QueryRowContext(ctx, sqlSelectAPIToken+` WHERE name = ?`, name))
		if err != nil {
			return notFound(err, fleet.ErrTokenNotFound, name)
		}
		if _, err := s.writer.ExecContext(ctx, `DELETE FROM api_tokens WHERE name = ?`, name); err != nil {
			return err
		}
		s.stats.transactions.Add(1)
		s.stats.rows.Add(1)
		return nil
	})
	if err != nil {
		return fleet.APIToken{}, fmt.Errorf("revoke api token %s: %w", name, err)
	}
	return t, nil
}

// TouchAPIToken records that token t was used at the given time. A token
// deleted meanwhile is ignored, also when a new one has taken its name:
// the row is found by name and hash.
func (s *Store) TouchAPIToken(ctx context.Context, t fleet.APIToken, at time.Time) error {
	name := t.Name
	err := s.doSync(ctx, func() error {
		if _, err := s.writer.ExecContext(ctx, `UPDATE api_tokens SET last_used_at = ? WHERE name = ? AND hash = ?`, fmtTime(at), name, t.Hash); err != nil {
			return err
		}
		s.stats.transactions.Add(1)
		s.stats.rows.Add(1)
		return nil
	})
	if err != nil {
		return fmt.Errorf("touch api token %s: %w", name, err)
	}
	return nil
}

// ListAPITokens returns every token in the database, by name.
func (s *Store) ListAPITokens(ctx context.Context) ([]fleet.APIToken, error) {
	db, err := s.db()
	if err != nil {
		return nil, err
	}
	rows, err := db.QueryContext(ctx, sqlSelectAPIToken+` ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list api tokens: %w", err)
	}
	return collect(rows, scanAPIToken, "list api tokens")
}

const sqlSelectAPIToken = `SELECT name, role, hash, created_at, expires_at, last_used_at FROM api_tokens`

func scanAPIToken(sc scanner) (fleet.APIToken, error) {
	var t fleet.APIToken
	var created string
	var expires, used sql.NullString
	if err := sc.Scan(&t.Name, &t.Role, &t.Hash, &created, &expires, &used); err != nil {
		return t, err
	}
	var err error
	if t.CreatedAt, err = parseTime(created); err != nil {
		return t, err
	}
	if t.ExpiresAt, err = parseTimePtr(expires); err != nil {
		return t, err
	}
	t.LastUsedAt, err = parseTimePtr(used)
	return t, err
}
