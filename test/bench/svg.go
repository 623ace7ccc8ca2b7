package main

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

// The chart, drawn by hand: one group per operation and concurrency, a lane
// per implementation, on a log-scale millisecond axis. Each lane shows
// p50 (black tick), a box from p50 to p90, a thinner box from p90 to p99
// and a whisker to the maximum.
const (
	svgW      = 1200
	plotX0    = 270.0
	plotX1    = 1000.0
	annotX    = 1012.0
	laneH     = 14.0
	laneGap   = 5.0
	groupPad  = 14.0
	plotTop   = 172.0
	colBasalt = "#1f6fb4"
	colBase   = "#e8731a"
	fontAttrs = `font-family="DejaVu Sans, Verdana, Arial, sans-serif"`
)

type svgGroup struct {
	op    string
	conc  int
	lanes []*row
}

func groupRows(rows []*row) []*svgGroup {
	var gs []*svgGroup
	for _, r := range rows {
		var g *svgGroup
		for _, x := range gs {
			if x.op == r.Operation && x.conc == r.Concurrency {
				g = x
			}
		}
		if g == nil {
			g = &svgGroup{op: r.Operation, conc: r.Concurrency}
			gs = append(gs, g)
		}
		g.lanes = append(g.lanes, r)
	}
	for _, g := range gs { // basalt first
		if len(g.lanes) == 2 && g.lanes[0].Impl != implBasalt {
			g.lanes[0], g.lanes[1] = g.lanes[1], g.lanes[0]
		}
	}
	return gs
}

func esc(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

func renderSVG(res *results) []byte {
	groups := groupRows(res.Rows)
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, r := range res.Rows {
		for _, v := range []float64{r.P50Ms, r.MaxMs} {
			if !math.IsNaN(v) && v > 0 {
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
		}
	}
	if math.IsInf(lo, 0) {
		lo, hi = 1, 10
	}
	lo = math.Pow(10, math.Floor(math.Log10(lo)))
	hi = math.Pow(10, math.Ceil(math.Log10(hi)))
	if hi <= lo {
		hi = lo * 10
	}
	x := func(v float64) float64 {
		v = math.Max(lo, math.Min(hi, v))
		return plotX0 + (math.Log10(v)-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo))*(plotX1-plotX0)
	}

	// Layout.
	y := plotTop
	type placed struct {
		g    *svgGroup
		y, h float64
	}
	var ps []placed
	for _, g := range groups {
		n := math.Max(2, float64(len(g.lanes)))
		h := n*(laneH+laneGap) - laneGap + 2*groupPad
		ps = append(ps, placed{g, y, h})
		y += h
	}
	plotBottom := y
	height := plotBottom + 110

	var b bytes.Buffer
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	p(`<?xml version="1.0" encoding="UTF-8"?>`)
	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%.0f" viewBox="0 0 %d %.0f" %s font-size="12">`, svgW, height, svgW, height, fontAttrs)
	p(`<rect x="0" y="0" width="%d" height="%.0f" fill="#ffffff"/>`, svgW, height)

	// Title and subtitle.
	m := res.Machine
	p(`<text x="20" y="30" font-size="19" font-weight="bold" fill="#222">Basalt vs baseline: latency per call (ms, log scale)</text>`)
	sub := fmt.Sprintf("%s · %d CPUs · %d MiB · kernel %s · %s · %s · git %s%s · N=%v, conc %v, node-n %v, scale-n %v",
		res.Started.Format("2006-01-02 15:04"), m.NProc, m.MemTotalMiB, m.Kernel, shortCeph(m.Ceph), m.Go, short(m.GitCommit),
		map[bool]string{true: " (dirty)"}[m.GitDirty], res.Options["n"], res.Options["concurrency"], res.Options["node_n"], res.Options["scale_n"])
	p(`<text x="20" y="52" font-size="12" fill="#555">%s</text>`, esc(sub))

	// Legend: colours, then a sample glyph with its parts named.
	ly := 82.0
	p(`<rect x="20" y="%.0f" width="14" height="12" fill="%s"/>`, ly-10, colBasalt)
	p(`<text x="40" y="%.0f">Basalt (basalt-csi over gRPC)</text>`, ly)
	p(`<rect x="250" y="%.0f" width="14" height="12" fill="%s"/>`, ly-10, colBase)
	p(`<text x="270" y="%.0f">baseline (librbd from the bench process; shell commands for the node rows)</text>`, ly)
	gy := 112.0
	gx := func(f float64) float64 { return 690 + f*260 }
	drawGlyph(p, gx(0), gx(0.35), gx(0.6), gx(1), gy, "#666666")
	for _, l := range []struct {
		f    float64
		name string
	}{{0, "p50"}, {0.35, "p90"}, {0.6, "p99"}, {1, "max"}} {
		p(`<text x="%.1f" y="%.0f" font-size="10" fill="#444" text-anchor="middle">%s</text>`, gx(l.f), gy-11, l.name)
	}
	p(`<text x="20" y="%.0f" font-size="11" fill="#555">Each lane: black tick = p50, box = p50-p90, thin box = p90-p99, whisker = max. Right: p50 / p99 ms, errors.</text>`, gy+4)
	p(`<text x="20" y="%.0f" font-size="11" fill="#555">Under each label: Basalt/baseline ratios (p50: lower is better; ops/s: higher is better).</text>`, gy+19)

	// Group backgrounds.
	for i, pl := range ps {
		if i%2 == 0 {
			p(`<rect x="10" y="%.1f" width="%d" height="%.1f" fill="#f3f5f8"/>`, pl.y, svgW-20, pl.h)
		}
	}
	// Grid and axis labels (1-2-5 steps), at the top and the bottom.
	for k := math.Log10(lo); k <= math.Log10(hi)+1e-9; k++ {
		for _, mlt := range []float64{1, 2, 5} {
			v := mlt * math.Pow(10, k)
			if v < lo*0.999 || v > hi*1.001 {
				continue
			}
			xx := x(v)
			stroke, w := "#d5d9e0", 1.0
			if mlt == 1 {
				stroke, w = "#aab2bf", 1.2
			}
			p(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="%.1f"/>`, xx, plotTop-4, xx, plotBottom+4, stroke, w)
			lbl := axisLabel(v)
			p(`<text x="%.1f" y="%.1f" font-size="10" fill="#444" text-anchor="middle">%s</text>`, xx, plotTop-8, lbl)
			p(`<text x="%.1f" y="%.1f" font-size="10" fill="#444" text-anchor="middle">%s</text>`, xx, plotBottom+16, lbl)
		}
	}
	p(`<text x="%.1f" y="%.1f" font-size="11" fill="#333" text-anchor="middle">latency per call, milliseconds (log scale)</text>`, (plotX0+plotX1)/2, plotBottom+32)
	p(`<text x="%.1f" y="%.1f" font-size="10" fill="#444">p50 / p99 ms</text>`, annotX+14, plotTop-22)

	// Groups.
	for _, pl := range ps {
		g := pl.g
		ly := pl.y + groupPad
		label := g.op
		if g.conc > 0 {
			label += fmt.Sprintf("  c=%d", g.conc)
		}
		p(`<text x="20" y="%.1f" font-size="12" font-weight="bold" fill="#222">%s</text>`, ly+11, esc(label))
		var sub string
		var subColor = "#555"
		if len(g.lanes) > 0 && g.lanes[0].Impl == implBasalt {
			r := g.lanes[0]
			switch {
			case r.RatioP50 != nil && r.RatioOps != nil:
				sub = fmt.Sprintf("p50 %.2fx   ops/s %.2fx   N=%d", *r.RatioP50, *r.RatioOps, r.N)
				subColor = "#1a1a1a"
			case !r.HasBaseline:
				sub = fmt.Sprintf("no baseline   N=%d   %.1f ops/s", r.N, r.OpsPerSec)
			default:
				sub = fmt.Sprintf("baseline missing   N=%d", r.N)
			}
		}
		p(`<text x="20" y="%.1f" font-size="11" fill="%s">%s</text>`, ly+laneH+laneGap+10, subColor, esc(sub))
		for i, r := range g.lanes {
			cy := ly + float64(i)*(laneH+laneGap) + laneH/2
			col := colBasalt
			if r.Impl == implBaseline {
				col = colBase
			}
			if math.IsNaN(r.P50Ms) {
				p(`<text x="%.1f" y="%.1f" font-size="11" fill="#b00020">%s: no successful call</text>`, plotX0+6, cy+4, r.Impl)
			} else {
				drawGlyph(p, x(r.P50Ms), x(r.P90Ms), x(r.P99Ms), x(r.MaxMs), cy, col)
			}
			ann := fmt.Sprintf("%s / %s", fmtMs(r.P50Ms), fmtMs(r.P99Ms))
			p(`<text x="%.1f" y="%.1f" font-size="11" fill="%s">%s</text>`, annotX, cy+4, col, esc(ann))
			if r.Errors > 0 {
				p(`<text x="%.1f" y="%.1f" font-size="11" font-weight="bold" fill="#b00020">%d err</text>`, annotX+118, cy+4, r.Errors)
			}
		}
	}
	// Plot frame.
	p(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#8a93a0" stroke-width="1"/>`, plotX0, plotTop-4, plotX1-plotX0, plotBottom-plotTop+8)

	// Memory footer.
	mem := res.Memory
	scale := "not measured"
	if mem.ScaleVolumes > 0 {
		scale = fmt.Sprintf("%.1f MiB", mem.ScaleRSSMiB)
	}
	p(`<text x="20" y="%.1f" font-size="12" fill="#222">basalt-csi RSS: idle %.1f MiB · with %s volumes %s · at the end %.1f MiB · peak %.1f MiB</text>`,
		plotBottom+60, mem.IdleRSSMiB, scaleN(mem.ScaleVolumes), scale, mem.FinalRSSMiB, mem.PeakRSSMiB)
	var tl []string
	for _, t := range res.Targets {
		st := "n/m"
		if t.Met != nil {
			st = map[bool]string{true: "met", false: "MISSED"}[*t.Met]
		}
		tl = append(tl, fmt.Sprintf("%s %s: %s", t.Name, t.Goal, st))
	}
	p(`<text x="20" y="%.1f" font-size="11" fill="#555">targets: %s</text>`, plotBottom+80, esc(strings.Join(tl[:min(3, len(tl))], " · ")))
	if len(tl) > 3 {
		p(`<text x="20" y="%.1f" font-size="11" fill="#555">%s</text>`, plotBottom+96, esc(strings.Join(tl[3:], " · ")))
	}
	p(`</svg>`)
	return b.Bytes()
}

// drawGlyph draws one lane's distribution centred on cy.
func drawGlyph(p func(string, ...any), x50, x90, x99, xmax, cy float64, col string) {
	p(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="1.5"/>`, x99, cy, xmax, cy, col)
	p(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="1.5"/>`, xmax, cy-4, xmax, cy+4, col)
	p(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" fill-opacity="0.45"/>`, x90, cy-3.5, math.Max(x99-x90, 0.5), 7.0, col)
	p(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" fill-opacity="0.9"/>`, x50, cy-laneH/2, math.Max(x90-x50, 1), laneH, col)
	p(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#111" stroke-width="2.5"/>`, x50, cy-laneH/2-1, x50, cy+laneH/2+1)
}

func axisLabel(v float64) string {
	return strconv.FormatFloat(math.Round(v*1e6)/1e6, 'f', -1, 64)
}

// checkXML decodes the whole document.
func checkXML(data []byte) error {
	d := xml.NewDecoder(bytes.NewReader(data))
	d.Strict = true
	depth, elems := 0, 0
	for {
		t, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		switch t.(type) {
		case xml.StartElement:
			depth++
			elems++
		case xml.EndElement:
			depth--
		}
	}
	if depth != 0 || elems == 0 {
		return fmt.Errorf("unbalanced document (depth %d, %d elements)", depth, elems)
	}
	return nil
}
