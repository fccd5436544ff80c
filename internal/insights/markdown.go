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
	fmt.Fprintf(&b, "- State of charge %.0f %%, %.2f kWh remaining of %.2f kWh rated", sn.SOC, sn.RemainingKWh, sn.CapacityKWh)
	switch {
	case sn.Discharging && sn.RuntimeHours > 0:
		fmt.Fprintf(&b, "; %.1f h runtime at the present %.0f W load", sn.RuntimeHours, math.Abs(sn.PowerW))
	case sn.HoursToFull > 0:
		fmt.Fprintf(&b, "; charging at %.0f W, full in %.1f h", sn.PowerW, sn.HoursToFull)
	}
	b.WriteString(".\n")
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
			fmt.Fprintf(&b, "- %s: %+.3f %s/day (R² %.2f, %s confidence, %d days), now %.2f %s.\n", l.label, t.Slope, l.unit, t.R2, t.Confidence, t.N, t.Last, l.unit)
		}
		e := h.Energy
		fmt.Fprintf(&b, "- Energy: %.2f kWh/day charged, %.2f kWh/day consumed (net %+.2f kWh/day) over %.1f days of data", e.DailyChargeKWh, e.DailyDischargeKWh, e.NetDailyKWh, e.CoveredDays)
		if e.SolarClass != "" {
			fmt.Fprintf(&b, "; solar sufficiency %.0f %% (%s)", e.SolarSufficiencyPct, e.SolarClass)
		}
		if e.AutonomyDays > 0 {
			fmt.Fprintf(&b, "; autonomy %.1f days", e.AutonomyDays)
		}
		b.WriteString(".\n")
		l := h.Load
		fmt.Fprintf(&b, "- Load: %.0f %% of consumption at night (18:00–06:00), %.0f W average at night vs %.0f W by day; peak hour %02d:00.\n", l.NightSharePct, l.NightAvgW, l.DayAvgW, l.PeakHour)
		if h.AnomalyCount > 0 {
			fmt.Fprintf(&b, "- %d anomalies beyond 3σ", h.AnomalyCount)
			for i, an := range h.Anomalies {
				if i == 3 {
					b.WriteString(", …")
					break
				}
				fmt.Fprintf(&b, "%s %s %.1f vs %.1f expected at %s", map[bool]string{true: ":", false: ";"}[i == 0], an.Metric, an.Value, an.Expected, an.Time.Format("2006-01-02 15:04"))
			}
			b.WriteString(".\n")
		}
		if h.SOCJumpCount > 0 {
			fmt.Fprintf(&b, "- %d SOC jumps > 20 points within an hour.\n", h.SOCJumpCount)
		}
	}

	b.WriteString("\n## RECOMMENDATIONS\n\n")
	recs := a.recommendations()
	for _, r := range recs {
		b.WriteString("- " + r + "\n")
	}
	return b.String()
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
			need := KWh(sn.RatedCapacityAh*(50-sn.SOC)/100, sn.NominalVoltage)
			msg := fmt.Sprintf("Recharge to at least 50 %% SOC (about %.2f kWh more) and keep it above %.0f %%.", max(need, 0), SOCWarningPct)
			if f.Severity == SeverityCritical {
				red = append(red, "🔴 "+msg)
			} else {
				yellow = append(yellow, "🟡 "+msg)
			}
		case "CAPACITY_RETENTION":
			switch f.Severity {
			case SeverityCritical:
				red = append(red, fmt.Sprintf("🔴 Plan a replacement: capacity is %.0f %% of rated (%.2f kWh usable of %.2f kWh), below the 80 %% end-of-life mark.", f.Value, sn.CapacityKWh*f.Value/100, sn.CapacityKWh))
			case SeverityWarning:
				yellow = append(yellow, fmt.Sprintf("🟡 Capacity at %.0f %% of rated: do a full capacity test and avoid depth of discharge beyond 80 %% to stay above 80 %%.", f.Value))
			}
		case "CYCLE_LIFE":
			if f.Severity == SeverityWarning {
				yellow = append(yellow, fmt.Sprintf("🟡 %.0f %% of the rated cycle life used: budget a replacement within the next %.0f cycles.", f.Value, max(sn.RatedCycles-sn.CycleCount, 0)))
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
		green = append(green, fmt.Sprintf("🟢 No action needed: keep cell spread < %.0f mV and temperature between %.0f °C and %.0f °C.", ImbalanceGoodMV, TempWarningLowC, TempWarningHighC))
	}
	if a.History.Records == 0 {
		green = append(green, "🟢 Record snapshots at least hourly so energy balance and trends (kWh/day) can be computed.")
	}
	return append(append(red, yellow...), green...)
}
