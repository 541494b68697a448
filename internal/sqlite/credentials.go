package sqlite

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/flotaio/flota/internal/fleet"
)

// migrationCredentials is migration 7: MQTT accounts. Devices and monitors
// share the id namespace (one primary key), so no account can use another's
// MQTT client ID. hash is an argon2id PHC string; secrets are never stored.
const migrationCredentials = `CREATE TABLE credentials (
		id         TEXT PRIMARY KEY,
		role       TEXT NOT NULL,          -- device or monitor
		status     TEXT NOT NULL,          -- pending, active or revoked
		hash       TEXT NOT NULL,
		created_at TEXT NOT NULL,
		updated_at TEXT NOT NULL
	);
	CREATE INDEX credentials_status ON credentials(status);`

// AddCredentials inserts accounts in one transaction: all or none. An ID
// that already names an account fails with fleet.ErrCredentialExists,
// unless both are monitors and the one there is revoked: a monitor's name
// can be given again (an operator recreating it), with the new secret's
// hash, so the old secret stays refused. A device's revocation stays
// permanent: its ID is the common name of certificates flota cannot revoke.
func (s *Store) AddCredentials(ctx context.Context, creds []fleet.Credential) error {
	now := time.Now()
	err := s.doSync(ctx, func() error {
		tx, err := s.writer.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer rollback(tx) //nolint:errcheck // no-op after Commit
		st, err := tx.PrepareContext(ctx, `INSERT INTO credentials(id, role, status, hash, created_at, updated_at)
			VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET role = excluded.role, status = excluded.status,
				hash = excluded.hash, created_at = excluded.created_at, updated_at = excluded.updated_at
			WHERE credentials.status = 'revoked' AND credentials.role = 'monitor' AND excluded.role = 'monitor'`)
		if err != nil {
			return err
		}
		defer st.Close()
		for _, c := range creds {
			res, err := st.ExecContext(ctx, c.ID, string(c.Role), string(c.Status), c.Hash, fmtTime(now), fmtTime(now))
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n == 0 {
				return fleet.Errorf(fleet.ErrCredentialExists, "%s", c.ID)
			}
		}
		if err := tx.Commit(); err != nil {
			return err
		}
		s.stats.transactions.Add(1)
		s.stats.rows.Add(int64(len(creds)))
		return nil
	})
	if err != nil {
		return fmt.Errorf("add credentials: %w", err)
	}
	return nil
}

// SetCredentialStatus sets the status of account id. from, when not empty,
// lists the statuses it may have now; otherwise the change fails with
// fleet.ErrIllegalTransition. It returns the account as it was before.
func (s *Store) SetCredentialStatus(ctx context.Context, id string, to fleet.CredentialStatus, from ...fleet.CredentialStatus) (fleet.Credential, error) {
	var before fleet.Credential
	err := s.doSync(ctx, func() error {
		c, err := scanCredential(s.writer.QueryRowContext(ctx, sqlSelectCredential+` WHERE id = ?`, id))
		if err != nil {
			return notFound(err, fleet.ErrCredentialNotFound, id)
		}
		before = c
		if len(from) > 0 && !containsStatus(from, c.Status) {
			return fleet.Errorf(fleet.ErrIllegalTransition, "%s is %s", id, c.Status)
		}
		if _, err := s.writer.ExecContext(ctx, `UPDATE credentials SET status = ?, updated_at = ? WHERE id = ?`,
			string(to), fmtTime(time.Now()), id); err != nil {
			return err
		}
		s.stats.transactions.Add(1)
		s.stats.rows.Add(1)
		return nil
	})
	if err != nil {
		return fleet.Credential{}, fmt.Errorf("set credential %s %s: %w", id, to, err)
	}
	return before, nil
}

func containsStatus(list []fleet.CredentialStatus, st fleet.CredentialStatus) bool {
	for _, x := range list {
		if x == st {
			return true
		}
	}
	return false
}

const sqlSelectCredential = `SELECT id, role, status, hash, created_at, updated_at FROM credentials`

func scanCredential(sc scanner) (fleet.Credential, error) {
	var c fleet.Credential
	var role, status, created, updated string
	if err := sc.Scan(&c.ID, &role, &status, &c.Hash, &created, &updated); err != nil {
		return c, err
	}
	c.Role, c.Status = fleet.Role(role), fleet.CredentialStatus(status)
	var err error
	if c.CreatedAt, err = parseTime(created); err != nil {
		return c, err
	}
	c.UpdatedAt, err = parseTime(updated)
	return c, err
}

// Credential returns account id, or fleet.ErrCredentialNotFound.
func (s *Store) Credential(ctx context.Context, id string) (fleet.Credential, error) {
	db, err := s.db()
	if err != nil {
		return fleet.Credential{}, err
	}
	c, err := scanCredential(db.QueryRowContext(ctx, sqlSelectCredential+` WHERE id = ?`, id))
	if err != nil {
		return fleet.Credential{}, notFound(err, fleet.ErrCredentialNotFound, id)
	}
	return c, nil
}

// ListCredentials returns the accounts of role and status (empty: any), by ID.
func (s *Store) ListCredentials(ctx context.Context, role fleet.Role, status fleet.CredentialStatus) ([]fleet.Credential, error) {
	db, err := s.db()
	if err != nil {
		return nil, err
	}
	var conds []string
	var args []any
	if role != "" {
		conds, args = append(conds, "role = ?"), append(args, string(role))
	}
	if status != "" {
		conds, args = append(conds, "status = ?"), append(args, string(status))
	}
	q := sqlSelectCredential
	if len(conds) > 0 {
		q += " WHERE " + strings.Join(conds, " AND ")
	}
	rows, err := db.QueryContext(ctx, q+" ORDER BY id", args...)
	if err != nil {
		return nil, fmt.Errorf("list credentials: %w", err)
	}
	return collect(rows, scanCredential, "list credentials")
}
