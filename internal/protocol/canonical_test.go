package protocol

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

// The v fields, for decode.
var (
	ackV    = func(m *Ack) int { return m.V }
	reportV = func(m *Report) int { return m.V }
)

// sameAsJSON asserts that whatever scan accepts, encoding/json (decode)
// accepts too and reads into the same message; it returns whether scan
// accepted b.
func sameAsJSON[T any](t testing.TB, kind string, b []byte, scan func([]byte) (T, bool), version func(*T) int) bool {
	t.Helper()
	got, ok := scan(b)
	if !ok {
		var zero T
		require.Equal(t, zero, got, "declined %q", b)
		return false
	}
	want, err := decode(kind, b, version)
	require.NoError(t, err, "scan accepted %q", b)
	require.Equal(t, want, got, "%q", b)
	return true
}

// canonicalCase is an input, whether the canonical scan takes it, and the
// decoder's answer (nil: accepted), which is encoding/json's either way.
type canonicalCase struct {
	name string
	in   string
	fast bool
	want error
}

func runCanonicalCases[T any](t *testing.T, kind string, cases []canonicalCase,
	scan func([]byte) (T, bool), version func(*T) int, decodeMsg func([]byte) (T, error)) {
	t.Helper()
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.fast, sameAsJSON(t, kind, []byte(tt.in), scan, version), "fast path")
			_, err := decodeMsg([]byte(tt.in))
			if tt.want == nil {
				assert.NoError(t, err)
			} else {
				matchErr(t, tt.want, err)
			}
		})
	}
}

func TestScanAck_CanonicalFormOnly(t *testing.T) {
	ack := func(handle, offset string) string { return `{"v":1,"handle":` + handle + `,"offset":` + offset + `}` }
	runCanonicalCases(t, KindAck, []canonicalCase{
		{"encoder output", string(Encode(Ack{V: Version, Handle: goldenHandle, Offset: goldenSize})), true, nil},
		{"zeros", ack("0", "0"), true, nil},
		{"max handle and offset", ack("4294967295", "9223372036854775807"), true, nil},
		{"handle over 32 bits", ack("4294967296", "0"), false, errJSONType},
		{"offset over 63 bits", ack("1", "9223372036854775808"), false, errJSONType},
		{"offset of 20 digits", ack("1", "10000000000000000000"), false, errJSONType},
		{"offset over 64 bits", ack("1", "18446744073709551616"), false, errJSONType},
		{"leading zero", ack("01", "0"), false, errJSONSyntax},
		{"offset minus zero", ack("1", "-0"), false, nil},
		{"offset negative", ack("1", "-1"), false, ErrBadValue},
		{"offset plus", ack("1", "+1"), false, errJSONSyntax},
		{"offset fraction", ack("1", "1.0"), false, errJSONType},
		{"offset exponent", ack("1", "1e3"), false, errJSONType},
		{"handle quoted", ack(`"1"`, "0"), false, errJSONType},
		{"v zero", `{"v":0,"handle":1,"offset":0}`, false, ErrBadVersion},
		{"v two", `{"v":2,"handle":1,"offset":0}`, false, ErrBadVersion},
		{"v ten", `{"v":10,"handle":1,"offset":0}`, false, ErrBadVersion},
		{"v leading zero", `{"v":01,"handle":1,"offset":0}`, false, errJSONSyntax},
		{"space after a colon", `{"v":1,"handle": 1,"offset":0}`, false, nil},
		{"leading space", ` {"v":1,"handle":1,"offset":0}`, false, nil},
		{"trailing newline", ack("1", "0") + "\n", false, nil},
		{"trailing data", ack("1", "0") + "x", false, errJSONSyntax},
		{"two objects", ack("1", "0") + "{}", false, errJSONSyntax},
		{"duplicate key", `{"v":1,"handle":1,"offset":1,"offset":2}`, false, nil},
		{"keys in another order", `{"v":1,"offset":1,"handle":1}`, false, nil},
		{"upper-case keys", `{"V":1,"Handle":1,"Offset":1}`, false, nil},
		{"upper-case key after its field", `{"v":1,"handle":1,"offset":1,"Offset":2}`, false, nil},
		{"unknown field", `{"v":1,"handle":1,"offset":1,"x":0}`, false, nil},
		{"field missing", `{"v":1,"handle":1}`, false, nil},
		{"truncated", `{"v":1,"handle":1,"offset":1`, false, errJSONSyntax},
		{"empty", ``, false, errJSONSyntax},
	}, scanAck, ackV, DecodeAck)
}

func TestScanReport_CanonicalFormOnly(t *testing.T) {
	report := func(update, state, tail string) string {
		return `{"v":1,"update":"` + update + `","handle":1,"state":"` + state + `","offset":5` + tail + `}`
	}
	long := strings.Repeat("r", MaxIdentLen+1)
	runCanonicalCases(t, KindReport, []canonicalCase{
		{"golden vector encoded", string(Encode(goldenValid["report_rejected.json"])), true, nil},
		{"no optional field", report("u", "accepted", ""), true, nil},
		{"reason", report("u", "failed", `,"reason":"bad_digest"`), true, nil},
		{"version", report("u", "rejected", `,"version":"1.4.2"`), true, nil},
		{"reason and version", report("u", "rejected", `,"reason":"busy","version":"1.4.2"`), true, nil},
		{"reason empty", report("u", "failed", `,"reason":""`), true, nil},
		{"version present but empty", report("u", "failed", `,"version":""`), true, nil},
		{"version and reason in another order", report("u", "rejected", `,"version":"1","reason":"busy"`), false, nil},
		{"reason twice", report("u", "failed", `,"reason":"a","reason":"b"`), false, nil},
		{"upper-case key", report("u", "failed", `,"Reason":"a"`), false, nil},
		{"printable ASCII", report(" !#$%&'()*+,-./0-9:;<=>?@A-Z[]^_`a-z{|}~", "accepted", ""), true, nil},
		{"update empty", report("", "accepted", ""), true, ErrMissing},
		{"state empty", report("u", "", ""), true, ErrBadValue},
		{"state unknown", report("u", "exploded", ""), true, ErrBadValue},
		{"state upper case", report("u", "ACCEPTED", ""), true, ErrBadValue},
		{"state of the orchestrator", report("u", "queued", ""), true, ErrBadValue},
		{"reason of 65 bytes", report("u", "failed", `,"reason":"`+long+`"`), true, ErrBadValue},
		{"over the size limit", report("u", "failed", `,"reason":"`+strings.Repeat("r", MaxControlSize)+`"`), false, ErrTooLarge},
		{"escaped quote", report(`a\"b`, "accepted", ""), false, nil},
		{"escaped backslash", report(`a\\b`, "accepted", ""), false, nil},
		{"unicode escape", report(`upd\u002d1`, "accepted", ""), false, nil},
		{"escaped state", report("u", `accept\u0065d`, ""), false, nil},
		{"UTF-8", report("ünï", "accepted", ""), false, ErrBadValue},
		{"invalid UTF-8", report("\xff", "accepted", ""), false, ErrBadValue},
		{"tab", report("a\tb", "accepted", ""), false, errJSONSyntax},
		{"DEL", report("a\x7fb", "accepted", ""), false, ErrBadValue},
		{"unterminated string", `{"v":1,"update":"u`, false, errJSONSyntax},
		{"offset missing", `{"v":1,"update":"u","handle":1,"state":"rebooting"}`, false, nil},
		{"offset negative", strings.Replace(report("u", "accepted", ""), "5}", "-5}", 1), false, ErrBadValue},
		{"handle over 32 bits", strings.Replace(report("u", "accepted", ""), `"handle":1`, `"handle":4294967296`, 1), false, errJSONType},
		{"v two", strings.Replace(report("u", "accepted", ""), `"v":1`, `"v":2`, 1), false, ErrBadVersion},
		{"space after a comma", strings.Replace(report("u", "accepted", ""), `,"state"`, `, "state"`, 1), false, nil},
		{"trailing space", report("u", "accepted", "") + " ", false, nil},
		{"upper-case keys", `{"V":1,"Update":"u","Handle":1,"State":"accepted","Offset":5}`, false, nil},
	}, scanReport, reportV, DecodeReport)
}

func TestScan_TakesEveryEncodedMessage(t *testing.T) {
	for _, handle := range []uint32{0, goldenHandle, 1<<32 - 1} {
		for _, offset := range []int64{0, goldenSize, 1<<63 - 1} {
			a := Ack{V: Version, Handle: handle, Offset: offset}
			got, ok := scanAck(Encode(a))
			assert.True(t, ok, "%+v", a)
			assert.Equal(t, a, got)
			for _, st := range fleet.AllDeviceStates {
				for _, reason := range []fleet.Reason{"", fleet.ReasonBusy} {
					for _, version := range []string{"", "1.4.2"} {
						r := Report{V: Version, Update: goldenUpdate, Handle: handle, State: st, Offset: offset, Reason: reason, Version: version}
						got, ok := scanReport(Encode(r))
						assert.True(t, ok, "%+v", r)
						assert.Equal(t, r, got)
					}
				}
			}
		}
	}
}

// seedCorpus adds the inputs the fuzzer kept for another target.
func seedCorpus(f *testing.F, target string) {
	dir := filepath.Join("testdata", "fuzz", target)
	entries, err := os.ReadDir(dir)
	require.NoError(f, err)
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		require.NoError(f, err)
		lit, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "go test fuzz v1\n[]byte(")
		require.True(f, ok, "%s: not one []byte", e.Name())
		s, err := strconv.Unquote(strings.TrimSuffix(lit, ")"))
		require.NoError(f, err, e.Name())
		f.Add([]byte(s))
	}
}

func FuzzCanonical_SameAsEncodingJSON(f *testing.F) {
	for _, kind := range []string{KindAck, KindReport} {
		seedVectors(f, kind)
		seedCorpus(f, "FuzzDecode"+strings.ToUpper(kind[:1])+kind[1:])
	}
	for name, m := range goldenValid {
		if strings.HasPrefix(name, KindAck) || strings.HasPrefix(name, KindReport) {
			f.Add(Encode(m))
		}
	}
	f.Add(Encode(Ack{V: Version, Handle: 1<<32 - 1, Offset: 1<<63 - 1}))
	f.Add(Encode(Report{V: Version, Update: "u", Handle: 1<<32 - 1, State: fleet.StateFailed, Offset: 1<<63 - 1,
		Reason: fleet.ReasonInstallFailed, Version: "2.0.0-rc.1+build.7"}))
	f.Fuzz(func(t *testing.T, b []byte) {
		sameAsJSON(t, KindAck, b, scanAck, ackV)
		sameAsJSON(t, KindReport, b, scanReport, reportV)
	})
}

func BenchmarkDecode(b *testing.B) {
	ack := Encode(Ack{V: Version, Handle: goldenHandle, Offset: 262144})
	report := Encode(Report{V: Version, Update: goldenUpdate, Handle: goldenHandle, State: fleet.StateDownloaded, Offset: 262144})
	for _, bm := range []struct {
		name string
		run  func() error
	}{
		{"ack", func() error { _, err := DecodeAck(ack); return err }},
		{"ack/encoding-json", func() error { _, err := decode(KindAck, ack, ackV); return err }},
		{"report", func() error { _, err := DecodeReport(report); return err }},
		{"report/encoding-json", func() error { _, err := decode(KindReport, report, reportV); return err }},
	} {
		b.Run(bm.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := bm.run(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
