// Package bms holds the battery-management-system data types shared by the
// wire contract (tasks), the store and the insights engine. It imports
// nothing of ours so every other package may depend on it.
package bms

import "time"

// Snapshot is one BMS reading, the `analysisData` of a generate-insights
// event (DESIGN.md section 7). Units are in the field comments. Pointer-free
// on purpose: absent numbers read as zero, which every analysis treats as
// "not measured" where that matters (for example FullCapacity 0).
type Snapshot struct {
	StateOfCharge         float64   `json:"stateOfCharge" bson:"stateOfCharge"`                 // %
	OverallVoltage        float64   `json:"overallVoltage" bson:"overallVoltage"`               // V
	Current               float64   `json:"current" bson:"current"`                             // A, negative = discharging
	Power                 float64   `json:"power" bson:"power"`                                 // W
	RemainingCapacity     float64   `json:"remainingCapacity" bson:"remainingCapacity"`         // Ah
	FullCapacity          float64   `json:"fullCapacity" bson:"fullCapacity"`                   // Ah
	CycleCount            float64   `json:"cycleCount" bson:"cycleCount"`                       //
	HighestCellVoltage    float64   `json:"highestCellVoltage" bson:"highestCellVoltage"`       // V
	LowestCellVoltage     float64   `json:"lowestCellVoltage" bson:"lowestCellVoltage"`         // V
	AverageCellVoltage    float64   `json:"averageCellVoltage" bson:"averageCellVoltage"`       // V
	CellVoltageDifference float64   `json:"cellVoltageDifference" bson:"cellVoltageDifference"` // V
	CellVoltages          []float64 `json:"cellVoltages,omitempty" bson:"cellVoltages,omitempty"`
	Temperatures          []float64 `json:"temperatures,omitempty" bson:"temperatures,omitempty"` // °C
	MOSTemperature        float64   `json:"mosTemperature" bson:"mosTemperature"`                 // °C
	ChargeMOSOn           bool      `json:"chargeMosOn" bson:"chargeMosOn"`
	DischargeMOSOn        bool      `json:"dischargeMosOn" bson:"dischargeMosOn"`
	BalanceOn             bool      `json:"balanceOn" bson:"balanceOn"`
	Alerts                []string  `json:"alerts,omitempty" bson:"alerts,omitempty"`
	Status                string    `json:"status,omitempty" bson:"status,omitempty"`
	HardwareSystemID      string    `json:"hardwareSystemId,omitempty" bson:"hardwareSystemId,omitempty"`
}

// Record is one document of the `history` collection: a snapshot of a
// system at a time.
type Record struct {
	ID        string    `json:"id" bson:"_id"`
	SystemID  string    `json:"systemId" bson:"systemId"`
	Timestamp time.Time `json:"timestamp" bson:"timestamp"`
	Analysis  Snapshot  `json:"analysis" bson:"analysis"`
}

// System is one document of the `systems` collection.
type System struct {
	ID                       string         `json:"id" bson:"_id"`
	Name                     string         `json:"name" bson:"name"`
	Chemistry                string         `json:"chemistry" bson:"chemistry"` // "LiFePO4", "Li-ion", "lead-acid"
	Voltage                  float64        `json:"voltage" bson:"voltage"`     // nominal V
	Capacity                 float64        `json:"capacity" bson:"capacity"`   // Ah
	Latitude                 float64        `json:"latitude" bson:"latitude"`
	Longitude                float64        `json:"longitude" bson:"longitude"`
	MaxAmpsSolarCharging     float64        `json:"maxAmpsSolarCharging" bson:"maxAmpsSolarCharging"`
	MaxAmpsGeneratorCharging float64        `json:"maxAmpsGeneratorCharging" bson:"maxAmpsGeneratorCharging"`
	LastInsights             map[string]any `json:"lastInsights,omitempty" bson:"lastInsights,omitempty"`
}
