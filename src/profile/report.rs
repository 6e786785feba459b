//! The profiling report: total time, the split into forward / backward / optimizer, and the
//! ops by time.

use super::{gpu_timestamps, snapshot, Phase};
use crate::Device;
use std::fmt::Write;
use std::time::Duration;

/// Ops listed in the report's table.
const TOP: usize = 20;
const RULE: &str = "================================================================================";

/// The report of everything recorded since profiling started or was last reset.
pub fn report() -> String {
    let s = snapshot();
    let mut out = String::new();
    let w = &mut out;
    let title = "IronTensor Profiling Report";
    let _ = writeln!(w, "{RULE}\n{}{title}\n{RULE}", " ".repeat((RULE.len() - title.len()) / 2));
    let avg_step = if s.steps > 0 { fmt_time(s.total.div_f64(s.steps as f64)) } else { "-".into() };
    let _ = writeln!(w, "Total Time: {} | Steps: {} | Avg Step: {avg_step}", fmt_total(s.total), s.steps);

    // Per step when steps were counted, else totals; shares are of the three phases together.
    let phase_sum: Duration = s.phases.iter().sum();
    let per = s.steps.max(1) as f64;
    let _ = writeln!(w, "\nPhase Breakdown{}:", if s.steps > 0 { " (per step)" } else { "" });
    for p in Phase::ALL {
        let t = s.phases[p as usize];
        let share = format!("({:.1}%)", pct(t, phase_sum));
        let _ = writeln!(w, "  {:<15}{:>9} {share:>7}", format!("{}:", p.label()), fmt_time(t.div_f64(per)));
    }

    let _ = writeln!(w, "\nTop Operations by Time:");
    let both = s.ops.iter().any(|o| o.device == Device::Cpu) && s.ops.iter().any(|o| o.device == Device::Gpu);
    let name = |o: &super::OpStat| {
        if both {
            format!("{} ({})", o.name, o.device.name())
        } else {
            o.name.to_string()
        }
    };
    let top = &s.ops[..s.ops.len().min(TOP)];
    let nw = top.iter().map(|o| name(o).len()).max().unwrap_or(0).max(19);
    // CPU ops: the share of the CPU's threads the op kept busy (process CPU time over wall time).
    let threads = rayon::current_num_threads() as u32;
    let busy = |o: &super::OpStat| match o.device {
        Device::Cpu if !o.cpu.is_zero() => format!("{:>5.0}%", pct(o.cpu, o.total * threads)),
        _ => "    -".into(),
    };
    let _ = writeln!(w, "  Rank | {:<nw$} | Total    | Count | Avg     | % Total | Busy", "Operation");
    let _ = writeln!(w, "  -----+-{}-+----------+-------+---------+---------+------", "-".repeat(nw));
    for (i, o) in top.iter().enumerate() {
        let avg = fmt_time(o.total.div_f64(o.count.max(1) as f64));
        let _ = writeln!(
            w,
            "  {:>3}  | {:<nw$} | {:<8} | {:<5} | {avg:>7} | {:>5.1}%  | {}",
            i + 1,
            name(o),
            fmt_time(o.total),
            o.count,
            pct(o.total, s.total),
            busy(o)
        );
    }
    if s.ops.len() > TOP {
        let _ = writeln!(w, "  ... {} more", s.ops.len() - TOP);
    }
    let cpu_ops: Duration = s.ops.iter().filter(|o| o.device == Device::Cpu).map(|o| o.total).sum();
    if !cpu_ops.is_zero() {
        let (cpu, total) = (s.ops.iter().map(|o| o.cpu).sum::<Duration>(), s.total);
        let _ = writeln!(
            w,
            "CPU ops: {:.1}% of the total time, {:.0}% busy on {threads} threads; outside ops {}",
            pct(cpu_ops, total),
            pct(cpu, cpu_ops * threads),
            fmt_time(total.saturating_sub(cpu_ops))
        );
    }
    if s.ops.iter().any(|o| o.device == Device::Gpu) {
        let note = match gpu_timestamps() {
            Some(true) => "GPU op times: GPU timestamps at the start and end of each compute pass.",
            _ => "GPU op times: not measured (the adapter lacks TIMESTAMP_QUERY); GPU ops are counted only.",
        };
        let _ = writeln!(w, "{note}");
    }
    let _ = writeln!(w, "{RULE}");
    out
}

fn pct(part: Duration, whole: Duration) -> f64 {
    if whole.is_zero() {
        0.0
    } else {
        100.0 * part.as_secs_f64() / whole.as_secs_f64()
    }
}

/// "45.32s": how the report prints the total time.
fn fmt_total(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// "28.4s", "5.9ms", "12.0us" or "640ns".
fn fmt_time(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.1}s")
    } else if s >= 1e-3 {
        format!("{:.1}ms", s * 1e3)
    } else if s >= 1e-6 {
        format!("{:.1}us", s * 1e6)
    } else {
        format!("{}ns", d.as_nanos())
    }
}

#[cfg(test)]
mod tests {
    use super::fmt_time;
    use std::time::Duration;

    #[test]
    fn times_read_as_the_report_prints_them() {
        assert_eq!(fmt_time(Duration::from_millis(28_400)), "28.4s");
        assert_eq!(fmt_time(Duration::from_micros(5_900)), "5.9ms");
        assert_eq!(fmt_time(Duration::from_nanos(12_040)), "12.0us");
        assert_eq!(fmt_time(Duration::from_nanos(640)), "640ns");
    }
}
