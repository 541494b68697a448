package main

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
)

// plot is a line chart with a logarithmic x axis and a linear y axis from 0.
type plot struct {
	Title, XLabel, YLabel string
	Series                []series
}

// series is one line of a plot.
type series struct {
	Name   string
	Color  string // any SVG colour
	Points []point
}

type point struct{ X, Y float64 }

// The plot's geometry, in SVG user units.
const (
	svgWidth, svgHeight = 720, 440
	svgLeft, svgRight   = 80, 30 // margins around the plotting area
	svgTop, svgBottom   = 50, 70
	svgYTicks           = 5
)

// writeSVG draws p as a standalone SVG document. Every x must be positive
// (the x axis is logarithmic) and every y finite and not negative.
func writeSVG(w io.Writer, p plot) error {
	var xs []float64
	maxY := 0.0
	for _, s := range p.Series {
		for _, pt := range s.Points {
			if !(pt.X > 0) || math.IsInf(pt.X, 0) {
				return fmt.Errorf("plot %q: x must be positive and finite, got %v", s.Name, pt.X)
			}
			if !(pt.Y >= 0) || math.IsInf(pt.Y, 0) {
				return fmt.Errorf("plot %q: y must be finite and not negative, got %v", s.Name, pt.Y)
			}
			xs = append(xs, pt.X)
			maxY = max(maxY, pt.Y)
		}
	}
	if len(xs) == 0 {
		return errors.New("plot: no points")
	}
	slices.Sort(xs)
	xs = slices.Compact(xs)
	lo, hi := math.Log10(xs[0]), math.Log10(xs[len(xs)-1])
	if hi-lo < 1e-9 { // one x value: centre it
		lo, hi = lo-0.5, hi+0.5
	}
	lo, hi = lo-0.05*(hi-lo), hi+0.05*(hi-lo) // keep the end points off the frame
	top := niceCeil(maxY)

	plotW := float64(svgWidth - svgLeft - svgRight)
	plotH := float64(svgHeight - svgTop - svgBottom)
	px := func(x float64) float64 { return svgLeft + (math.Log10(x)-lo)/(hi-lo)*plotW }
	py := func(y float64) float64 { return svgTop + plotH - y/top*plotH }

	var b bytes.Buffer
	fmt.Fprintf(&b, `<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="13">
<rect width="100%%" height="100%%" fill="white"/>
`, svgWidth, svgHeight, svgWidth, svgHeight)
	text := func(x, y float64, anchor, extra, s string) {
		fmt.Fprintf(&b, `<text x="%s" y="%s" text-anchor="%s"%s>`, num(x), num(y), anchor, extra)
		_ = xml.EscapeText(&b, []byte(s)) // writes to a bytes.Buffer: no error
		b.WriteString("</text>\n")
	}
	text(svgWidth/2, 28, "middle", ` font-size="16" font-weight="bold"`, p.Title)

	// Grid, ticks and tick labels.
	b.WriteString(`<g class="grid" stroke="#ddd" stroke-width="1">` + "\n")
	for i := 0; i <= svgYTicks; i++ {
		y := py(top * float64(i) / svgYTicks)
		fmt.Fprintf(&b, `<line x1="%s" y1="%s" x2="%s" y2="%s"/>`+"\n", num(svgLeft), num(y), num(svgLeft+plotW), num(y))
	}
	for _, x := range xs {
		fmt.Fprintf(&b, `<line x1="%s" y1="%s" x2="%s" y2="%s"/>`+"\n", num(px(x)), num(svgTop), num(px(x)), num(svgTop+plotH))
	}
	b.WriteString("</g>\n")
	for i := 0; i <= svgYTicks; i++ {
		v := top * float64(i) / svgYTicks
		text(svgLeft-8, py(v)+4, "end", "", strconv.FormatFloat(v, 'f', -1, 64))
	}
	for _, x := range xs {
		text(px(x), svgTop+plotH+18, "middle", "", strconv.FormatFloat(x, 'f', -1, 64))
	}

	// Axes and their labels.
	fmt.Fprintf(&b, `<g class="axes" stroke="black" stroke-width="1.5"><line x1="%s" y1="%s" x2="%s" y2="%s"/><line x1="%s" y1="%s" x2="%s" y2="%s"/></g>`+"\n",
		num(svgLeft), num(svgTop+plotH), num(svgLeft+plotW), num(svgTop+plotH),
		num(svgLeft), num(svgTop), num(svgLeft), num(svgTop+plotH))
	text(svgLeft+plotW/2, svgHeight-20, "middle", ` class="xlabel"`, p.XLabel)
	cy := svgTop + plotH/2
	text(22, cy, "middle", fmt.Sprintf(` class="ylabel" transform="rotate(-90 22 %s)"`, num(cy)), p.YLabel)

	// The lines, their points, and the legend.
	for i, s := range p.Series {
		pts := slices.Clone(s.Points)
		slices.SortFunc(pts, func(a, c point) int { return cmpFloat(a.X, c.X) })
		var coords []byte
		for j, pt := range pts {
			if j > 0 {
				coords = append(coords, ' ')
			}
			coords = fmt.Appendf(coords, "%s,%s", num(px(pt.X)), num(py(pt.Y)))
		}
		fmt.Fprintf(&b, `<g class="series">`+"\n"+`<polyline fill="none" stroke="%s" stroke-width="2.5" points="%s"/>`+"\n", attr(s.Color), coords)
		for _, pt := range pts {
			fmt.Fprintf(&b, `<circle cx="%s" cy="%s" r="4" fill="%s"><title>`, num(px(pt.X)), num(py(pt.Y)), attr(s.Color))
			_ = xml.EscapeText(&b, fmt.Appendf(nil, "%s: %g in flight, %.1f", s.Name, pt.X, pt.Y))
			b.WriteString("</title></circle>\n")
		}
		b.WriteString("</g>\n")
		ly := float64(svgTop + 16 + 20*i)
		fmt.Fprintf(&b, `<line class="legend" x1="%s" y1="%s" x2="%s" y2="%s" stroke="%s" stroke-width="2.5"/>`+"\n",
			num(svgLeft+16), num(ly-4), num(svgLeft+40), num(ly-4), attr(s.Color))
		text(svgLeft+46, ly, "start", ` class="legend"`, s.Name)
	}
	b.WriteString("</svg>\n")
	_, err := w.Write(b.Bytes())
	return err
}

// niceCeil rounds v up to 1, 2, 2.5 or 5 times a power of ten (1 for v <= 0).
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func num(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }

// attr escapes s for a double-quoted attribute value.
func attr(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s)) // writes to a bytes.Buffer: no error
	return b.String()
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
