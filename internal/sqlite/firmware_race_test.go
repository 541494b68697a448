package sqlite

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

// An upload of bytes already stored, whose only other firmware is deleted
// while the upload runs, still ends with its image on disk: the delete
// cannot remove the file between the upload's copy and its row.
func TestStore_DeletingFirmwareDuringAnUploadOfTheSameBytesKeepsTheImage(t *testing.T) {
	s := newTestStore(t, "")
	ctx := context.Background()
	old, err := s.AddFirmware(ctx, fleet.Firmware{Version: "1.0.0"}, strings.NewReader("the same bytes"))
	require.NoError(t, err)

	s.afterBlob = func() { require.NoError(t, s.DeleteFirmware(ctx, old.ID)) }
	fw, err := s.AddFirmware(ctx, fleet.Firmware{Version: "2.0.0"}, strings.NewReader("the same bytes"))
	s.afterBlob = nil
	require.NoError(t, err)
	assert.Equal(t, old.SHA256, fw.SHA256)
	b, err := os.ReadFile(s.FirmwarePath(fw.SHA256))
	require.NoError(t, err, "the stored firmware's image exists")
	assert.Equal(t, "the same bytes", string(b))
}
