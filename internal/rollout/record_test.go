package rollout_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/agent"
	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/sqlite"
)

// A device's progress row and the event of the change that led to it
// commit together or not at all. Here the database refuses every
// succeeded event (a trigger), as a full disk and a kill refuse whatever
// was not committed yet: the succeeded rows must be refused with them. A
// row committed without its event is, after a restart, a state the event
// log never recorded and never will (the engine takes the row as the
// device's state), as when a batch ended between the two writes.
func TestEngine_ProgressRowAndItsEventCommitTogether(t *testing.T) {
	h := newHarness(t)
	h.startAgents(3, "atomic", agent.Config{})
	h.waitDevices(3)

	db, err := sql.Open("sqlite3", "file:"+filepath.Join(h.dir, sqlite.DBFile))
	require.NoError(t, err)
	defer db.Close()
	_, err = db.Exec(`CREATE TRIGGER refuse_succeeded BEFORE INSERT ON events WHEN NEW.state = 'succeeded'
		BEGIN SELECT RAISE(ABORT, 'succeeded refused'); END`)
	require.NoError(t, err)

	fw, _ := h.addFirmware(8192, "1.1.0")
	u := h.create(fw, fleet.Policy{ChunkSize: 4096}, fleet.Selector{})
	h.waitEnd(u.ID, 30*time.Second)
	require.Error(t, h.store.Flush(context.Background()), "the refused writes are reported")
	require.Positive(t, h.store.Stats().Dropped, "the succeeded changes were refused")

	rows, _, err := h.store.Progress(context.Background(), u.ID, sqlite.ProgressFilter{Limit: 100})
	require.NoError(t, err)
	require.Len(t, rows, 3)
	recorded := map[string]bool{}
	for _, ev := range h.events(u.ID) {
		if ev.Type == fleet.EventDevice {
			recorded[ev.DeviceID+"/"+ev.State] = true
		}
	}
	for _, p := range rows {
		assert.True(t, recorded[p.DeviceID+"/"+string(p.State)], "%s stored %s without its event", p.DeviceID, p.State)
		assert.NotEqual(t, fleet.StateSucceeded, p.State, p.DeviceID)
	}
}
