package insights

import (
	"fmt"
	"math"
	"strings"
)

func sevIcon(s string) string {
	switch s {
	case SeverityCritical:
		return "🔴"
	case SeverityWarning:
		return "🟡"
	}
	return "🟢"
}

// Markdown renders the analysis as the report the BMS app shows.
func (a *Analysis) Markdown() string {
	var b strings.Builder
	name := a.SystemID
	if a.System != nil && a.System.Name != "" {
		name = a.System.Name
	}
	if name == "" {
		name = "battery"
	}
	fmt.Fprintf(&b, "# Battery insights: %s\n\n", name)
	fmt.Fprintf(&b, "**Health score %.0f/100, status %s.** ", a.HealthScore, a.Status)
	if a.Context.Records > 0 {
		fmt.Fprintf(&b, "Analysed %d records over %d days (%s to %s, %s).\n\n", a.Context.Records, a.Context.WindowDays,
			a.Context.From.Format("2006-01-02"), a.Context.To.Format("2006-01-02"), a.History.Mode)
	} else {
		fmt.Fprintf(&b, "No history in the %d-day window: current snapshot only.\n\n", a.Context.WindowDays)
	}

	b.WriteString("## KEY FINDINGS\n\n")
	sn := a.Snapshot
	if line := sn.stateLine(); line != "" {
		b.WriteString("- " + line + ".\n")
	}
	if len(sn.Unmeasured) > 0 {
		fmt.Fprintf(&b, "- Not measured in this snapshot: %s. Nothing is concluded from them, and the health score counts only what was measured.\n", unmeasuredLabels(sn.Unmeasured))
	}
	for _, f := range a.Findings {
		if f.Code == "RUNTIME" {
			continue
		}
		fmt.Fprintf(&b, "- %s **%s**: %s.\n", sevIcon(f.Severity), f.Code, f.Message)
	}
	for _, d := range a.Deductions {
		fmt.Fprintf(&b, "- Health score −%.0f for %s.\n", d.Points, d.Reason)
	}

	b.WriteString("\n## TREND ANALYSIS\n\n")
	h := a.History
	if h.Records == 0 {
		b.WriteString("- No history to fit trends to; store snapshots regularly (at least hourly) to enable trend analysis.\n")
	} else {
		a.historyLines(&b)
	}

	b.WriteString("\n## RECOMMENDATIONS\n\n")
	recs := a.recommendations()
	for _, r := range recs {
		b.WriteString("- " + r + "\n")
	}
	return b.String()
}

// stateLine is the snapshot's state of charge, energy and flow, from what
// it measured only ("" when it measured none of them).
func (sn SnapshotAnalysis) stateLine() string {
	var parts []string
	if sn.SOC != nil {
		parts = append(parts, fmt.Sprintf("state of charge %.0f %%", *sn.SOC))
	}
	switch {
	case sn.RemainingKWh != nil && sn.CapacityKWh > 0:
		parts = append(parts, fmt.Sprintf("%.2f kWh remaining of %.2f kWh rated", *sn.RemainingKWh, sn.CapacityKWh))
	case sn.RemainingKWh != nil:
		parts = append(parts, fmt.Sprintf("%.2f kWh remaining", *sn.RemainingKWh))
	case sn.RemainingAh != nil: // no voltage to give it in kWh
		parts = append(parts, fmt.Sprintf("%.1f Ah remaining", *sn.RemainingAh))
	case sn.CapacityKWh > 0:
		parts = append(parts, fmt.Sprintf("rated capacity %.2f kWh", sn.CapacityKWh))
	}
	if len(parts) == 0 && sn.VoltageV != nil { // the voltage is the only sign of charge left
		parts = append(parts, fmt.Sprintf("pack voltage %.2f V", *sn.VoltageV))
	}
	// rate is the present flow: in W when the power is known, else in A.
	rate := func() string {
		if sn.PowerW != nil {
			return fmt.Sprintf("%.0f W", math.Abs(*sn.PowerW))
		}
		return fmt.Sprintf("%.1f A", math.Abs(*sn.CurrentA))
	}
	var flow string
	switch {
	case sn.isDischarging() && sn.RuntimeHours > 0:
		if sn.PowerW != nil {
			flow = fmt.Sprintf("%.1f h runtime at the present %.0f W load", sn.RuntimeHours, math.Abs(*sn.PowerW))
		} else {
			flow = fmt.Sprintf("%.1f h runtime at the present %.1f A discharge", sn.RuntimeHours, math.Abs(*sn.CurrentA))
		}
	case sn.HoursToFull > 0:
		if sn.PowerW != nil {
			flow = fmt.Sprintf("charging at %.0f W, full in %.1f h", *sn.PowerW, sn.HoursToFull)
		} else {
			flow = fmt.Sprintf("charging at %.1f A, full in %.1f h", *sn.CurrentA, sn.HoursToFull)
		}
	case sn.CurrentA != nil || sn.PowerW != nil:
		// The sign of the current decides (EffectivePower follows it).
		var v float64
		if sn.PowerW != nil {
			v = *sn.PowerW
		} else {
			v = *sn.CurrentA
		}
		switch {
		case v < 0:
			flow = "discharging at " + rate()
		case v > 0:
			flow = "charging at " + rate()
		default:
			flow = "idle, no current flowing"
		}
	}
	line := strings.Join(parts, ", ")
	switch {
	case flow == "":
	case line == "":
		line = flow
	default:
		line += "; " + flow
	}
	if line == "" {
		return ""
	}
	return strings.ToUpper(line[:1]) + line[1:]
}

// historyLines are the TREND ANALYSIS lines of a window with records.
func (a *Analysis) historyLines(b *strings.Builder) {
	h := a.History
	labels := []struct{ key, label, unit string }{
		{"soc", "Average SOC", "%"},
		{"voltage", "Average voltage", "V"},
		{"temperature", "Temperature", "°C"},
		{"imbalanceMv", "Cell imbalance", "mV"},
		{"capacityAh", "Estimated capacity", "Ah"},
		{"chargeKWh", "Daily charge energy", "kWh"},
		{"dischargeKWh", "Daily consumption", "kWh"},
	}
	for _, l := range labels {
		t, ok := h.Trends[l.key]
		if !ok {
			continue
		}
		fmt.Fprintf(b, "- %s: %+.3f %s/day (R² %.2f, %s confidence, %d days), now %.2f %s.\n", l.label, t.Slope, l.unit, t.R2, t.Confidence, t.N, t.Last, l.unit)
	}
	if e := h.Energy; e.CoveredDays > 0 {
		fmt.Fprintf(b, "- Energy: %.2f kWh/day charged, %.2f kWh/day consumed (net %+.2f kWh/day) over %.1f days of data", e.DailyChargeKWh, e.DailyDischargeKWh, e.NetDailyKWh, e.CoveredDays)
		if e.SolarClass != "" {
			fmt.Fprintf(b, "; solar sufficiency %.0f %% (%s)", e.SolarSufficiencyPct, e.SolarClass)
		}
		if e.AutonomyDays > 0 {
			fmt.Fprintf(b, "; autonomy %.1f days", e.AutonomyDays)
		}
		b.WriteString(".\n")
		l := h.Load
		fmt.Fprintf(b, "- Load: %.0f %% of consumption at night (18:00–06:00), %.0f W average at night vs %.0f W by day; peak hour %02d:00.\n", l.NightSharePct, l.NightAvgW, l.DayAvgW, l.PeakHour)
	} else {
		b.WriteString("- Energy and load: not measured (no power, nor voltage and current, in the history).\n")
	}
	if h.AnomalyCount > 0 {
		fmt.Fprintf(b, "- %d anomalies beyond 3σ", h.AnomalyCount)
		for i, an := range h.Anomalies {
			if i == 3 {
				b.WriteString(", …")
				break
			}
			fmt.Fprintf(b, "%s %s %.1f vs %.1f expected at %s", map[bool]string{true: ":", false: ";"}[i == 0], an.Metric, an.Value, an.Expected, an.Time.Format("2006-01-02 15:04"))
		}
		b.WriteString(".\n")
	}
	if h.SOCJumpCount > 0 {
		fmt.Fprintf(b, "- %d SOC jumps > 20 points within an hour.\n", h.SOCJumpCount)
	}
}

func (a *Analysis) recommendations() []string {
	var red, yellow, green []string
	// bySeverity files msg as red (critical) or yellow (warning).
	bySeverity := func(f Finding, msg string) {
		if f.Severity == SeverityCritical {
			red = append(red, "🔴 "+msg)
		} else {
			yellow = append(yellow, "🟡 "+msg)
		}
	}
	sn := a.Snapshot
	e := a.History.Energy
	for _, f := range a.Findings {
		switch f.Code {
		case "CELL_IMBALANCE":
			switch f.Severity {
			case SeverityCritical:
				red = append(red, fmt.Sprintf("🔴 Balance the cells now: spread %.0f mV, target < %.0f mV (charge to 100 %% and hold for active balancing, or balance manually).", f.Value, ImbalanceGoodMV))
			case SeverityWarning:
				yellow = append(yellow, fmt.Sprintf("🟡 Run a full absorption charge weekly to bring the cell spread from %.0f mV to < %.0f mV.", f.Value, ImbalanceGoodMV))
			}
		case "TEMPERATURE_HIGH":
			bySeverity(f, fmt.Sprintf("Cool the battery from %.1f °C to below %.0f °C (ventilation, shade, lower charge current).", f.Value, TempWarningHighC))
		case "TEMPERATURE_LOW":
			bySeverity(f, fmt.Sprintf("Warm the battery from %.1f °C to above %.0f °C before charging (insulation or a heating pad).", f.Value, TempWarningLowC))
		case "MOS_TEMPERATURE":
			red = append(red, fmt.Sprintf("🔴 Reduce load or charge current: MOSFETs at %.1f °C, keep them below %.0f °C.", f.Value, MOSCriticalC))
		case "SOC_LOW":
			msg := fmt.Sprintf("Recharge to at least 50 %% SOC and keep it above %.0f %%.", SOCWarningPct)
			if sn.CapacityKWh > 0 && sn.SOC != nil { // the energy needs a known capacity
				need := KWh(sn.RatedCapacityAh*(50-*sn.SOC)/100, sn.NominalVoltage)
				msg = fmt.Sprintf("Recharge to at least 50 %% SOC (about %.2f kWh more) and keep it above %.0f %%.", max(need, 0), SOCWarningPct)
			}
			if f.Severity == SeverityCritical {
				red = append(red, "🔴 "+msg)
			} else {
				yellow = append(yellow, "🟡 "+msg)
			}
		case "CAPACITY_RETENTION":
			switch f.Severity {
			case SeverityCritical:
				usable := ""
				if sn.CapacityKWh > 0 {
					usable = fmt.Sprintf(" (%.2f kWh usable of %.2f kWh)", sn.CapacityKWh*f.Value/100, sn.CapacityKWh)
				}
				red = append(red, fmt.Sprintf("🔴 Plan a replacement: capacity is %.0f %% of rated%s, below the 80 %% end-of-life mark.", f.Value, usable))
			case SeverityWarning:
				yellow = append(yellow, fmt.Sprintf("🟡 Capacity at %.0f %% of rated: do a full capacity test and avoid depth of discharge beyond 80 %% to stay above 80 %%.", f.Value))
			}
		case "CYCLE_LIFE":
			if f.Severity == SeverityWarning && sn.CycleCount != nil {
				yellow = append(yellow, fmt.Sprintf("🟡 %.0f %% of the rated cycle life used: budget a replacement within the next %.0f cycles.", f.Value, max(sn.RatedCycles-*sn.CycleCount, 0)))
			}
		case "SOLAR_SUFFICIENCY":
			if f.Severity == SeverityWarning {
				short := e.DailyDischargeKWh - e.DailyChargeKWh
				yellow = append(yellow, fmt.Sprintf("🟡 Charging covers %.0f %% of consumption: add about %.2f kWh/day of generation or cut the load by that much (target ≥ 100 %%).", f.Value, short))
			}
		case "AUTONOMY":
			if f.Severity == SeverityWarning {
				yellow = append(yellow, fmt.Sprintf("🟡 Only %.1f days of autonomy: target ≥ 1 day, i.e. ≥ %.2f kWh usable storage or less than %.2f kWh/day load.", f.Value, e.DailyDischargeKWh, sn.CapacityKWh*AutonomyUsableFraction))
			}
		case "SOC_JUMPS":
			yellow = append(yellow, fmt.Sprintf("🟡 %.0f SOC jumps seen: recalibrate the BMS SOC with a full charge to 100 %% and check the shunt wiring.", f.Value))
		case "ANOMALIES":
			if f.Severity != SeverityWarning {
				continue
			}
			yellow = append(yellow, fmt.Sprintf("🟡 Inspect the %.0f anomalous readings (beyond 3σ): check connections, sensors and unusual loads at those times.", f.Value))
		case "IMBALANCE_RISING":
			yellow = append(yellow, fmt.Sprintf("🟡 Cell imbalance is rising %.2f mV/day: balance before it reaches %.0f mV.", f.Value, ImbalanceFairMV))
		case "CAPACITY_FADE":
			yellow = append(yellow, fmt.Sprintf("🟡 Capacity fading %.3f Ah/day: reduce time at 100 %% SOC and high temperature to slow it.", f.Value))
		case "BMS_ALERT":
			yellow = append(yellow, "🟡 Resolve the BMS alert: "+strings.TrimPrefix(f.Message, "BMS alert: ")+".")
		}
	}
	if a.History.Records > 0 && e.DailyDischargeKWh > 0 {
		green = append(green, fmt.Sprintf("🟢 Keep daily consumption (%.2f kWh) below daily charging (%.2f kWh) and SOC between 20 %% and 90 %% for the longest life.", e.DailyDischargeKWh, e.DailyChargeKWh))
	}
	if sn.CapacityKWh > 0 {
		green = append(green, fmt.Sprintf("🟢 Usable energy at 80 %% depth of discharge: %.2f kWh; size nightly loads below it.", sn.CapacityKWh*AutonomyUsableFraction))
	}
	if len(red)+len(yellow) == 0 {
		// Only targets for what was measured.
		var keep []string
		if sn.HasCells {
			keep = append(keep, fmt.Sprintf("cell spread < %.0f mV", ImbalanceGoodMV))
		}
		if sn.MaxTemperature != nil {
			keep = append(keep, fmt.Sprintf("temperature between %.0f °C and %.0f °C", TempWarningLowC, TempWarningHighC))
		}
		if len(keep) > 0 {
			green = append(green, "🟢 No action needed: keep "+strings.Join(keep, " and ")+".")
		} else {
			green = append(green, "🟢 Nothing measured calls for action.")
		}
	}
	if a.History.Records == 0 {
		green = append(green, "🟢 Record snapshots at least hourly so energy balance and trends (kWh/day) can be computed.")
	}
	return append(append(red, yellow...), green...)
}
