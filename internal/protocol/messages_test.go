package protocol

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

// decodeCase is one decoder input and what the decoder must do with it.
type decodeCase struct {
	name string
	in   string
	want error // nil: accepted; errJSONType/errJSONSyntax: a JSON error
}

// runDecodeCases runs cases through decode, checking the kind in every
// refusal.
func runDecodeCases[T any](t *testing.T, kind string, decode func([]byte) (T, error), cases []decodeCase) {
	t.Helper()
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decode([]byte(tt.in))
			if tt.want == nil {
				require.NoError(t, err)
				return
			}
			matchErr(t, tt.want, err)
			var de *DecodeError
			require.ErrorAs(t, err, &de)
			assert.Equal(t, kind, de.Kind)
			assert.True(t, strings.HasPrefix(err.Error(), "decode "+kind+": "), err.Error())
			assert.Zero(t, got)
		})
	}
}

// tags returns a JSON object of n tags.
func tags(n int) string {
	parts := make([]string, n)
	for i := range parts {
		parts[i] = fmt.Sprintf(`"k%d":"v"`, i)
	}
	return "{" + strings.Join(parts, ",") + "}"
}

// sized returns a hello of exactly n bytes.
func sized(n int) string {
	base := `{"v":1,"version":"1","pad":""}`
	return strings.Replace(base, `"pad":""`, `"pad":"`+strings.Repeat("p", n-len(base))+`"`, 1)
}

func TestDecode_Common(t *testing.T) {
	// Checks made by the shared decoding step, shown on the hello.
	runDecodeCases(t, KindHello, DecodeHello, []decodeCase{
		{"exactly the size limit", sized(MaxControlSize), nil},
		{"one byte over the size limit", sized(MaxControlSize + 1), ErrTooLarge},
		{"unknown fields are ignored", `{"v":1,"version":"1","future":{"a":[1,2]},"x":null}`, nil},
		{"whitespace around", " \n\t{\"v\":1,\"version\":\"1\"}\r\n", nil},
		{"v missing", `{"version":"1"}`, ErrBadVersion},
		{"v zero", `{"v":0,"version":"1"}`, ErrBadVersion},
		{"v two", `{"v":2,"version":"1"}`, ErrBadVersion},
		{"v negative", `{"v":-1,"version":"1"}`, ErrBadVersion},
		{"v as string", `{"v":"1","version":"1"}`, errJSONType},
		{"v as float", `{"v":1.0,"version":"1"}`, errJSONType},
		{"v as bool", `{"v":true,"version":"1"}`, errJSONType},
		{"null", `null`, ErrBadVersion},
		{"array", `[1]`, errJSONType},
		{"number", `1`, errJSONType},
		{"empty", ``, errJSONSyntax},
		{"truncated", `{"v":1,"version":"1"`, errJSONSyntax},
		{"trailing garbage", `{"v":1,"version":"1"}x`, errJSONSyntax},
		{"two objects", `{"v":1,"version":"1"}{"v":1}`, errJSONSyntax},
		{"binary", "\x01\x01\x00\x00", errJSONSyntax},
	})
}

func TestDecodeHello_Validation(t *testing.T) {
	long := strings.Repeat("m", 64)
	runDecodeCases(t, KindHello, DecodeHello, []decodeCase{
		{"minimal", `{"v":1,"version":"1.0.0"}`, nil},
		{"full", `{"v":1,"model":"m","version":"1","tags":{"a":"b"},"transfer":{"update":"u","handle":1,"offset":5,"state":"downloading"}}`, nil},
		{"rebooting transfer", `{"v":1,"version":"2","transfer":{"update":"u","handle":1,"offset":100,"state":"rebooting"}}`, nil},
		{"null transfer", `{"v":1,"version":"1","transfer":null}`, nil},
		{"model of 64 bytes", `{"v":1,"model":"` + long + `","version":"1"}`, nil},
		{"version of 64 bytes", `{"v":1,"version":"` + long + `"}`, nil},
		{"32 tags", `{"v":1,"version":"1","tags":` + tags(32) + `}`, nil},
		{"every printable ASCII byte", `{"v":1,"model":" !#$%&'()*+,-./09:;<=>?@AZ[]^_` + "`" + `az{|}~","version":"1 (rc)"}`, nil},
		{"tag key and value of 64 bytes", `{"v":1,"version":"1","tags":{"` + long + `":"` + long + `"}}`, nil},
		{"tag value empty", `{"v":1,"version":"1","tags":{"site":""}}`, nil},
		{"tag key of 65 bytes", `{"v":1,"version":"1","tags":{"` + long + `k":"v"}}`, ErrBadValue},
		{"tag value with a tab", `{"v":1,"version":"1","tags":{"site":"a\tb"}}`, ErrBadValue},
		{"model with DEL", `{"v":1,"model":"a\u007f","version":"1"}`, ErrBadValue},
		{"version missing", `{"v":1,"model":"m"}`, ErrMissing},
		{"version empty", `{"v":1,"version":""}`, ErrMissing},
		{"model of 65 bytes", `{"v":1,"model":"` + long + `m","version":"1"}`, ErrBadValue},
		{"version of 65 bytes", `{"v":1,"version":"` + long + `v"}`, ErrBadValue},
		{"33 tags", `{"v":1,"version":"1","tags":` + tags(33) + `}`, ErrBadValue},
		{"transfer without update", `{"v":1,"version":"1","transfer":{"handle":1,"offset":0,"state":"downloading"}}`, ErrBadValue},
		{"transfer negative offset", `{"v":1,"version":"1","transfer":{"update":"u","handle":1,"offset":-1,"state":"downloading"}}`, ErrBadValue},
		{"transfer unknown state", `{"v":1,"version":"1","transfer":{"update":"u","handle":1,"offset":0,"state":"done"}}`, ErrBadValue},
		{"transfer without state", `{"v":1,"version":"1","transfer":{"update":"u","handle":1,"offset":0}}`, ErrBadValue},
		{"version as number", `{"v":1,"version":1}`, errJSONType},
		{"tags as array", `{"v":1,"version":"1","tags":["a"]}`, errJSONType},
		{"tag value as number", `{"v":1,"version":"1","tags":{"a":1}}`, errJSONType},
		{"transfer as string", `{"v":1,"version":"1","transfer":"u"}`, errJSONType},
		{"handle negative", `{"v":1,"version":"1","transfer":{"update":"u","handle":-1,"offset":0,"state":"downloading"}}`, errJSONType},
		{"handle over 32 bits", `{"v":1,"version":"1","transfer":{"update":"u","handle":4294967296,"offset":0,"state":"downloading"}}`, errJSONType},
	})
}

func TestDecodeReport_Validation(t *testing.T) {
	report := func(state string) string {
		return `{"v":1,"update":"u","handle":1,"state":"` + state + `"}`
	}
	var cases []decodeCase
	for _, s := range fleet.AllDeviceStates {
		var want error
		switch s {
		case fleet.StateAccepted, fleet.StateRejected, fleet.StateDownloaded, fleet.StateVerified,
			fleet.StateInstalling, fleet.StateRebooting, fleet.StateFailed, fleet.StateCancelled:
		default: // queued, offered, downloading, succeeded, skipped: not reported by a device
			want = ErrBadValue
		}
		cases = append(cases, decodeCase{"state " + string(s), report(string(s)), want})
	}
	cases = append(cases, []decodeCase{
		{"accepted with offset", `{"v":1,"update":"u","handle":1,"state":"accepted","offset":65536}`, nil},
		{"handle zero", `{"v":1,"update":"u","handle":0,"state":"accepted"}`, nil},
		{"handle missing", `{"v":1,"update":"u","state":"accepted"}`, nil},
		{"failed with reason", `{"v":1,"update":"u","handle":1,"state":"failed","reason":"install_failed","version":"1.0"}`, nil},
		{"unknown reason passes through", `{"v":1,"update":"u","handle":1,"state":"failed","reason":"flash_worn_out"}`, nil},
		{"reason with digits", `{"v":1,"update":"u","handle":1,"state":"failed","reason":"flash_error_42"}`, nil},
		{"reason upper case", `{"v":1,"update":"u","handle":1,"state":"failed","reason":"Bad_Digest"}`, ErrBadValue},
		{"reason with a hyphen", `{"v":1,"update":"u","handle":1,"state":"failed","reason":"bad-digest"}`, ErrBadValue},
		{"reason with a space", `{"v":1,"update":"u","handle":1,"state":"failed","reason":"bad digest"}`, ErrBadValue},
		{"reason of 64 bytes", `{"v":1,"update":"u","handle":1,"state":"failed","reason":"` + strings.Repeat("r", MaxIdentLen) + `"}`, nil},
		{"reason of 65 bytes", `{"v":1,"update":"u","handle":1,"state":"failed","reason":"` + strings.Repeat("r", MaxIdentLen+1) + `"}`, ErrBadValue},
		{"version of 65 bytes", `{"v":1,"update":"u","handle":1,"state":"rejected","reason":"busy","version":"` + strings.Repeat("1", MaxIdentLen+1) + `"}`, ErrBadValue},
		{"reason as number", `{"v":1,"update":"u","handle":1,"state":"failed","reason":7}`, errJSONType},
		{"unknown fields tolerated", `{"v":1,"update":"u","handle":1,"state":"accepted","progress":{"x":[1]},"signed":true}`, nil},
		{"state empty", report(""), ErrBadValue},
		{"state unknown", report("exploded"), ErrBadValue},
		{"state upper case", report("ACCEPTED"), ErrBadValue},
		{"update missing", `{"v":1,"handle":1,"state":"accepted"}`, ErrMissing},
		{"update empty", `{"v":1,"update":"","handle":1,"state":"accepted"}`, ErrMissing},
		{"offset negative", `{"v":1,"update":"u","handle":1,"state":"accepted","offset":-16}`, ErrBadValue},
		{"offset as string", `{"v":1,"update":"u","handle":1,"state":"accepted","offset":"0"}`, errJSONType},
		{"offset fractional", `{"v":1,"update":"u","handle":1,"state":"accepted","offset":1.5}`, errJSONType},
		{"state as number", `{"v":1,"update":"u","handle":1,"state":3}`, errJSONType},
		{"bad version", `{"v":3,"update":"u","handle":1,"state":"accepted"}`, ErrBadVersion},
	}...)
	runDecodeCases(t, KindReport, DecodeReport, cases)
}

func TestDecodeAck_Validation(t *testing.T) {
	runDecodeCases(t, KindAck, DecodeAck, []decodeCase{
		{"valid", `{"v":1,"handle":16909060,"offset":16400}`, nil},
		{"offset zero", `{"v":1,"handle":1,"offset":0}`, nil},
		{"max handle", `{"v":1,"handle":4294967295,"offset":1}`, nil},
		{"offset negative", `{"v":1,"handle":1,"offset":-1}`, ErrBadValue},
		{"handle negative", `{"v":1,"handle":-1,"offset":1}`, errJSONType},
		{"handle over 32 bits", `{"v":1,"handle":4294967296,"offset":1}`, errJSONType},
		{"handle as hex string", `{"v":1,"handle":"0x01020304","offset":1}`, errJSONType},
		{"offset as string", `{"v":1,"handle":1,"offset":"1"}`, errJSONType},
		{"bad version", `{"v":2,"handle":1,"offset":1}`, ErrBadVersion},
		{"no version", `{"handle":1,"offset":1}`, ErrBadVersion},
	})
}

func TestDecodeOffer_Validation(t *testing.T) {
	offer := func(update string, size, chunk, window int) string {
		return fmt.Sprintf(`{"v":1,"update":%q,"handle":1,"attempt":1,`+
			`"firmware":{"id":"fw","name":"n","version":"2","size":%d,"sha256":"00"},"chunk_size":%d,"window":%d}`,
			update, size, chunk, window)
	}
	runDecodeCases(t, KindOffer, DecodeOffer, []decodeCase{
		{"valid", offer("u", 1000, 16384, 8), nil},
		{"empty image", offer("u", 0, 16384, 8), nil},
		{"chunk size 1", offer("u", 10, 1, 1), nil},
		{"chunk size at the limit", offer("u", 10, MaxChunkPayload, 64), nil},
		{"update empty", offer("", 1000, 16384, 8), ErrBadValue},
		{"size negative", offer("u", -1, 16384, 8), ErrBadValue},
		{"chunk size zero", offer("u", 1000, 0, 8), ErrBadValue},
		{"chunk size over the limit", offer("u", 1000, MaxChunkPayload+1, 8), ErrBadValue},
		{"window zero", offer("u", 1000, 16384, 0), ErrBadValue},
		{"window negative", offer("u", 1000, 16384, -1), ErrBadValue},
		{"firmware as string", `{"v":1,"update":"u","handle":1,"firmware":"fw","chunk_size":1024,"window":1}`, errJSONType},
		{"bad version", strings.Replace(offer("u", 1, 1024, 1), `"v":1`, `"v":9`, 1), ErrBadVersion},
	})
}

func TestDecodeCancel_Validation(t *testing.T) {
	runDecodeCases(t, KindCancel, DecodeCancel, []decodeCase{
		{"valid", `{"v":1,"update":"u","handle":1,"reason":"operator"}`, nil},
		{"no reason", `{"v":1,"update":"u","handle":1}`, nil},
		{"update missing", `{"v":1,"handle":1,"reason":"operator"}`, ErrMissing},
		{"reason as number", `{"v":1,"update":"u","handle":1,"reason":1}`, errJSONType},
		{"bad version", `{"v":0,"update":"u","handle":1}`, ErrBadVersion},
	})
}

func TestEncode_OmitsEmptyOptionalFields(t *testing.T) {
	tests := []struct {
		in   any
		want string
	}{
		{Hello{V: 1, Model: "m", Version: "1"}, `{"v":1,"model":"m","version":"1"}`},
		{Report{V: 1, Update: "u", Handle: 2, State: fleet.StateAccepted}, `{"v":1,"update":"u","handle":2,"state":"accepted","offset":0}`},
		{Ack{V: 1, Handle: 2, Offset: 0}, `{"v":1,"handle":2,"offset":0}`},
		{Cancel{V: 1, Update: "u", Handle: 2, Reason: fleet.ReasonOperator}, `{"v":1,"update":"u","handle":2,"reason":"operator"}`},
	}
	for _, tt := range tests {
		assert.JSONEq(t, tt.want, string(Encode(tt.in)))
	}
}

func TestEncode_PanicsOnUnencodable(t *testing.T) {
	assert.Panics(t, func() { Encode(make(chan int)) })
}

func TestDecodeError_Unwrap(t *testing.T) {
	_, err := DecodeAck([]byte(`{"v":1,"handle":1,"offset":-1}`))
	var de *DecodeError
	require.ErrorAs(t, err, &de)
	assert.Equal(t, KindAck, de.Kind)
	assert.ErrorIs(t, err, ErrBadValue)
	assert.NotErrorIs(t, err, ErrMissing)
	var syntax *json.SyntaxError
	assert.False(t, strings.Contains(err.Error(), "\n"))
	assert.NotErrorAs(t, err, &syntax)
}
