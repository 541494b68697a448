package main

import (
	"bytes"
	"encoding/xml"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// svgDoc is the part of the SVG the tests read back with encoding/xml.
type svgDoc struct {
	XMLName xml.Name `xml:"svg"`
	Width   int      `xml:"width,attr"`
	Height  int      `xml:"height,attr"`
	Texts   []struct {
		Class string `xml:"class,attr"`
		Value string `xml:",chardata"`
	} `xml:"text"`
	Legend []struct {
		Stroke string `xml:"stroke,attr"`
	} `xml:"line"`
	Series []struct {
		Polyline struct {
			Stroke string `xml:"stroke,attr"`
			Points string `xml:"points,attr"`
		} `xml:"polyline"`
		Circles []struct {
			CX    float64 `xml:"cx,attr"`
			CY    float64 `xml:"cy,attr"`
			Title string  `xml:"title"`
		} `xml:"circle"`
	} `xml:"g"`
}

func parseSVG(t *testing.T, b []byte) svgDoc {
	t.Helper()
	var doc svgDoc
	require.NoError(t, xml.Unmarshal(b, &doc), "%s", b)
	return doc
}

func samplePlot() plot {
	return plot{
		Title: "2000 devices & <256 KiB>", XLabel: "devices in flight", YLabel: "MiB/s",
		Series: []series{
			{Name: "flota", Color: "#1f77b4", Points: []point{{256, 110}, {16, 40}, {64, 80}}},
			{Name: "raw", Color: "#d62728", Points: []point{{16, 60}, {64, 150}, {256, 210}}},
		},
	}
}

func TestWriteSVG_ParsesWithLinesAxesAndLegend(t *testing.T) {
	var b bytes.Buffer
	require.NoError(t, writeSVG(&b, samplePlot()))
	doc := parseSVG(t, b.Bytes())
	assert.Equal(t, svgWidth, doc.Width)
	assert.Equal(t, svgHeight, doc.Height)

	texts := map[string]string{} // value -> class
	for _, tx := range doc.Texts {
		texts[strings.TrimSpace(tx.Value)] = tx.Class
	}
	assert.Contains(t, texts, "2000 devices & <256 KiB>", "the title, escaped and read back")
	assert.Equal(t, "xlabel", texts["devices in flight"])
	assert.Equal(t, "ylabel", texts["MiB/s"])
	assert.Equal(t, "legend", texts["flota"])
	assert.Equal(t, "legend", texts["raw"])
	for _, tick := range []string{"16", "64", "256", "0", "250"} {
		assert.Contains(t, texts, tick, "tick label")
	}

	var lines [][]point
	for _, g := range doc.Series {
		if g.Polyline.Points == "" {
			continue // grid or axes
		}
		var pts []point
		for _, pair := range strings.Fields(g.Polyline.Points) {
			x, y, ok := strings.Cut(pair, ",")
			require.True(t, ok, pair)
			fx, err := strconv.ParseFloat(x, 64)
			require.NoError(t, err)
			fy, err := strconv.ParseFloat(y, 64)
			require.NoError(t, err)
			pts = append(pts, point{fx, fy})
		}
		require.Len(t, g.Circles, len(pts))
		lines = append(lines, pts)
	}
	require.Len(t, lines, 2, "two lines")
	assert.Equal(t, "#1f77b4", doc.Series[len(doc.Series)-2].Polyline.Stroke)

	flota, raw := lines[0], lines[1]
	// Sorted by x; 64 lies halfway between 16 and 256 on a log axis.
	assert.Less(t, flota[0].X, flota[1].X)
	assert.InDelta(t, (flota[0].X+flota[2].X)/2, flota[1].X, 0.2)
	// Same x for the same in-flight value in both lines; more MiB/s is higher up.
	for i := range flota {
		assert.InDelta(t, flota[i].X, raw[i].X, 1e-9)
		assert.Greater(t, flota[i].Y, raw[i].Y, "raw is faster at %d, so drawn above", i)
		assert.True(t, flota[i].X >= svgLeft && flota[i].X <= svgWidth-svgRight)
		assert.True(t, raw[i].Y >= svgTop && raw[i].Y <= svgHeight-svgBottom)
	}
	// The y axis starts at 0: a point at 0 MiB/s would sit on the x axis, 250 at the top.
	assert.Contains(t, doc.Series[len(doc.Series)-1].Circles[0].Title, "raw: 16 in flight, 60.0")
}

func TestWriteSVG_RejectsBadPoints(t *testing.T) {
	for name, p := range map[string]plot{
		"no points":  {Series: []series{{Name: "a"}}},
		"zero x":     {Series: []series{{Name: "a", Points: []point{{0, 1}}}}},
		"negative y": {Series: []series{{Name: "a", Points: []point{{1, -1}}}}},
	} {
		var b bytes.Buffer
		assert.Error(t, writeSVG(&b, p), name)
		assert.Zero(t, b.Len(), name)
	}
}

func TestWriteSVG_OnePoint(t *testing.T) {
	var b bytes.Buffer
	require.NoError(t, writeSVG(&b, plot{Series: []series{{Name: "a", Color: "red", Points: []point{{100, 0}}}}}))
	doc := parseSVG(t, b.Bytes())
	c := doc.Series[len(doc.Series)-1].Circles
	require.Len(t, c, 1)
	assert.InDelta(t, svgLeft+float64(svgWidth-svgLeft-svgRight)/2, c[0].CX, 0.1, "a single x is centred")
	assert.InDelta(t, svgHeight-svgBottom, c[0].CY, 0.1, "0 MiB/s is on the x axis")
}

func TestNiceCeil_RoundsUp(t *testing.T) {
	for in, want := range map[float64]float64{0: 1, 0.3: 0.5, 1: 1, 1.5: 2, 210: 250, 260: 500, 999: 1000, 1001: 2000} {
		assert.InDelta(t, want, niceCeil(in), 1e-9, "%v", in)
	}
}

func TestSweepPlot_OneLinePerRun(t *testing.T) {
	rs := sampleResults()[:2]
	rep := sweepReport{
		Options: options{Devices: 2000, Size: 262144, ChunkSize: 16384, Window: 8},
		Points: []sweepPoint{
			{MaxInFlight: 16, Results: rs},
			{MaxInFlight: 256, Results: rs, Ratio: 0.5},
		},
	}
	p := sweepPlot(rep)
	require.Len(t, p.Series, 2)
	assert.Equal(t, "flota", p.Series[0].Name)
	assert.Equal(t, []point{{16, 100}, {256, 100}}, p.Series[0].Points)
	assert.Equal(t, []point{{16, 200}, {256, 200}}, p.Series[1].Points)

	path := filepath.Join(t.TempDir(), "sweep.svg")
	require.NoError(t, writePlotFile(path, p))
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	parseSVG(t, b)

	var out bytes.Buffer
	writeSweepTable(&out, rep)
	assert.Contains(t, out.String(), "in flight  flota MiB/s  raw MiB/s")
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	assert.Equal(t, []string{"256", "100.0", "200.0", "0.50", "1000", "250"}, strings.Fields(lines[len(lines)-1]))
}
