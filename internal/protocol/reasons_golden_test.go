package protocol

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

// reasonReports are the reports that carry a reason code, by the state they
// come with: one vector per pair, report_{state}_{reason}.json, besides the
// hand-written report_rejected.json, report_failed.json and
// report_cancelled.json.
var reasonReports = map[fleet.DeviceState][]fleet.Reason{
	fleet.StateRejected: {fleet.ReasonBusy, fleet.ReasonIncompatibleModel, fleet.ReasonNoSpace,
		fleet.ReasonChunkTooLarge, fleet.ReasonDowngradeRefused, fleet.ReasonBaseMismatch, fleet.ReasonUnsupportedEncoding},
	fleet.StateFailed: {fleet.ReasonBadDigest, fleet.ReasonBadSignature, fleet.ReasonInstallFailed,
		fleet.ReasonStorageError},
	// A cancelled report echoes the cancel's reason, or says unknown_update.
	fleet.StateCancelled: {fleet.ReasonUnknownUpdate, fleet.ReasonOperator, fleet.ReasonAborted,
		fleet.ReasonBadDigest, fleet.ReasonBadSignature, fleet.ReasonStorageError, fleet.ReasonTransferTimeout},
}

// cancelReasons are the reasons the orchestrator sends in a cancel
// (docs/PROTOCOL.md §5.5): one vector each, cancel_{reason}.json.
var cancelReasons = []fleet.Reason{fleet.ReasonOperator, fleet.ReasonAborted, fleet.ReasonBadDigest,
	fleet.ReasonBadSignature, fleet.ReasonStorageError, fleet.ReasonTransferTimeout}

// quoted are the pairs whose vector is one the documentation quotes
// (report_rejected.json, report_failed.json, report_cancelled.json,
// report_rejected_chunk_too_large.json, cancel.json): no second copy.
var quoted = map[string]bool{
	"report_rejected_incompatible_model.json": true, "report_failed_bad_digest.json": true,
	"report_cancelled_operator.json": true, "report_rejected_chunk_too_large.json": true,
	"cancel_operator.json": true,
}

// reasonVectors returns every generated reason vector with its decoded value.
func reasonVectors() map[string]any {
	out := map[string]any{}
	for st, reasons := range reasonReports {
		for _, r := range reasons {
			if quoted["report_"+string(st)+"_"+string(r)+".json"] {
				continue
			}
			rep := Report{V: 1, Update: goldenUpdate, Handle: goldenHandle, State: st, Reason: r}
			if st == fleet.StateRejected {
				rep.Version = "1.4.2" // the running version, for the operator
			}
			out["report_"+string(st)+"_"+string(r)+".json"] = rep
		}
	}
	for _, r := range cancelReasons {
		if quoted["cancel_"+string(r)+".json"] {
			continue
		}
		out["cancel_"+string(r)+".json"] = Cancel{V: 1, Update: goldenUpdate, Handle: goldenHandle, Reason: r}
	}
	return out
}

func init() {
	for name, v := range reasonVectors() {
		goldenValid[name] = v
	}
}

// deviceReasons are the codes marked "(device)" in internal/fleet/state.go:
// those a device sends.
func deviceReasons(t *testing.T) []fleet.Reason {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), filepath.Join("..", "fleet", "state.go"), nil, parser.ParseComments)
	require.NoError(t, err)
	var out []fleet.Reason
	ast.Inspect(f, func(n ast.Node) bool {
		vs, ok := n.(*ast.ValueSpec)
		if !ok || len(vs.Values) != 1 || !strings.Contains(vs.Comment.Text(), "(device)") {
			return true
		}
		if lit, ok := vs.Values[0].(*ast.BasicLit); ok && lit.Kind == token.STRING {
			out = append(out, fleet.Reason(strings.Trim(lit.Value, `"`)))
		}
		return true
	})
	require.NotEmpty(t, out)
	return out
}

func TestGolden_EveryDeviceReasonCodeHasAReportVector(t *testing.T) {
	have := map[fleet.Reason]bool{}
	for _, v := range goldenValid {
		if rep, ok := v.(Report); ok {
			have[rep.Reason] = true
		}
	}
	for _, r := range deviceReasons(t) {
		assert.True(t, have[r], "no golden report vector carries the device reason %s", r)
	}
}

func TestGolden_EveryCancelReasonHasAVector(t *testing.T) {
	for _, r := range cancelReasons {
		name := "cancel_" + string(r) + ".json"
		if r == fleet.ReasonOperator {
			name = "cancel.json"
		}
		v, ok := goldenValid[name]
		if assert.True(t, ok, "no golden vector %s", name) {
			assert.Equal(t, r, v.(Cancel).Reason, name)
		}
	}
}
