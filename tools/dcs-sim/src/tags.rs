//! The Tennessee Eastman Process tags the simulator exposes, with their descriptions, units and
//! (for the manipulated variables) engineering ranges. Source: `data/tep/SOURCE.md`.

/// One measured variable, `XMEAS(n)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// 1-based index `n` of `XMEAS(n)`.
    pub index: usize,
    /// What it measures.
    pub description: &'static str,
    /// Engineering unit.
    pub unit: &'static str,
}

/// One manipulated variable, `XMV(n)`; its setpoint is writable within `[low, high]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Manipulated {
    /// 1-based index `n` of `XMV(n)`.
    pub index: usize,
    /// What it manipulates.
    pub description: &'static str,
    /// Engineering unit (all are valve positions in %).
    pub unit: &'static str,
    /// Lowest accepted setpoint.
    pub low: f64,
    /// Highest accepted setpoint.
    pub high: f64,
    /// Initial setpoint (the base case of Downs & Vogel, rounded).
    pub initial: f64,
}

const fn m(index: usize, description: &'static str, unit: &'static str) -> Measurement {
    Measurement {
        index,
        description,
        unit,
    }
}

/// The 41 measurements, in column order.
pub const MEASUREMENTS: [Measurement; 41] = [
    m(1, "A feed (stream 1)", "kscmh"),
    m(2, "D feed (stream 2)", "kg/h"),
    m(3, "E feed (stream 3)", "kg/h"),
    m(4, "A and C feed (stream 4)", "kscmh"),
    m(5, "Recycle flow (stream 8)", "kscmh"),
    m(6, "Reactor feed rate (stream 6)", "kscmh"),
    m(7, "Reactor pressure", "kPa gauge"),
    m(8, "Reactor level", "%"),
    m(9, "Reactor temperature", "degC"),
    m(10, "Purge rate (stream 9)", "kscmh"),
    m(11, "Product separator temperature", "degC"),
    m(12, "Product separator level", "%"),
    m(13, "Product separator pressure", "kPa gauge"),
    m(14, "Product separator underflow (stream 10)", "m3/h"),
    m(15, "Stripper level", "%"),
    m(16, "Stripper pressure", "kPa gauge"),
    m(17, "Stripper underflow (stream 11)", "m3/h"),
    m(18, "Stripper temperature", "degC"),
    m(19, "Stripper steam flow", "kg/h"),
    m(20, "Compressor work", "kW"),
    m(21, "Reactor cooling water outlet temperature", "degC"),
    m(22, "Separator cooling water outlet temperature", "degC"),
    m(23, "Reactor feed analysis: A", "mol %"),
    m(24, "Reactor feed analysis: B", "mol %"),
    m(25, "Reactor feed analysis: C", "mol %"),
    m(26, "Reactor feed analysis: D", "mol %"),
    m(27, "Reactor feed analysis: E", "mol %"),
    m(28, "Reactor feed analysis: F", "mol %"),
    m(29, "Purge gas analysis: A", "mol %"),
    m(30, "Purge gas analysis: B", "mol %"),
    m(31, "Purge gas analysis: C", "mol %"),
    m(32, "Purge gas analysis: D", "mol %"),
    m(33, "Purge gas analysis: E", "mol %"),
    m(34, "Purge gas analysis: F", "mol %"),
    m(35, "Purge gas analysis: G", "mol %"),
    m(36, "Purge gas analysis: H", "mol %"),
    m(37, "Product analysis: D", "mol %"),
    m(38, "Product analysis: E", "mol %"),
    m(39, "Product analysis: F", "mol %"),
    m(40, "Product analysis: G", "mol %"),
    m(41, "Product analysis: H", "mol %"),
];

const fn v(index: usize, description: &'static str, initial: f64) -> Manipulated {
    Manipulated {
        index,
        description,
        unit: "%",
        low: 0.0,
        high: 100.0,
        initial,
    }
}

/// The 11 manipulated variables. Every one is a valve position; the engineering range of its
/// setpoint is 0–100 %.
pub const MANIPULATED: [Manipulated; 11] = [
    v(1, "D feed flow (stream 2)", 63.053),
    v(2, "E feed flow (stream 3)", 53.980),
    v(3, "A feed flow (stream 1)", 24.644),
    v(4, "A and C feed flow (stream 4)", 61.302),
    v(5, "Compressor recycle valve", 22.210),
    v(6, "Purge valve (stream 9)", 40.064),
    v(7, "Separator pot liquid flow (stream 10)", 38.100),
    v(8, "Stripper liquid product flow (stream 11)", 46.534),
    v(9, "Stripper steam valve", 47.446),
    v(10, "Reactor cooling water flow", 41.106),
    v(11, "Condenser cooling water flow", 18.114),
];

/// The string id of measurement `n`: `TEP.XMEAS(n)`.
#[must_use]
pub fn xmeas_id(n: usize) -> String {
    format!("TEP.XMEAS({n})")
}

/// The string id of the setpoint of manipulated variable `n`: `TEP.XMV(n).SP`.
#[must_use]
pub fn xmv_sp_id(n: usize) -> String {
    format!("TEP.XMV({n}).SP")
}

/// The string id of the measured position of manipulated variable `n`: `TEP.XMV(n).PV`.
#[must_use]
pub fn xmv_pv_id(n: usize) -> String {
    format!("TEP.XMV({n}).PV")
}

/// String ids of the advisory nodes and the interlock.
pub mod ids {
    /// Boolean: the model raises an alarm.
    pub const ALARM: &str = "Advisory.Alarm";
    /// Double: Hotelling's T².
    pub const T2: &str = "Advisory.T2";
    /// Double: the Q (SPE) statistic.
    pub const Q: &str = "Advisory.Q";
    /// Double: the T² control limit.
    pub const T2_LIMIT: &str = "Advisory.T2Limit";
    /// Double: the Q control limit.
    pub const Q_LIMIT: &str = "Advisory.QLimit";
    /// String: the contributing variables (free text, e.g. JSON).
    pub const CONTRIBUTORS: &str = "Advisory.Contributors";
    /// String: the model version that produced the advisory values.
    pub const MODEL_VERSION: &str = "Advisory.ModelVersion";
    /// DateTime: when the advisory values were last updated.
    pub const LAST_UPDATE: &str = "Advisory.LastUpdate";
    /// Boolean, operator-writable: remote writes to setpoints are allowed.
    pub const REMOTE_ENABLE: &str = "Interlock.RemoteEnable";
    /// UInt32: how many writes the simulator has logged.
    pub const WRITE_LOG_COUNT: &str = "WriteLog.Count";
    /// String (JSON): the last logged write.
    pub const WRITE_LOG_LAST: &str = "WriteLog.Last";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_in_order_and_ranges_are_sane() {
        for (i, t) in MEASUREMENTS.iter().enumerate() {
            assert_eq!(t.index, i + 1);
        }
        for (i, t) in MANIPULATED.iter().enumerate() {
            assert_eq!(t.index, i + 1);
            assert!(t.low < t.high && (t.low..=t.high).contains(&t.initial));
        }
        assert_eq!(xmv_sp_id(3), "TEP.XMV(3).SP");
        assert_eq!(xmeas_id(41), "TEP.XMEAS(41)");
    }
}
