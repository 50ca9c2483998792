//! The report's charts, drawn with plotters as SVG: latency over time per
//! operation kind, throughput per second, the faults by kind, and the
//! per-client timeline. Every chart shares the run's time axis and shows the
//! faults as bands, so a spike lines up with what caused it.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::history::{FaultRecord, Op, OpKind, Status};

/// Why a chart could not be drawn.
pub type PlotError = Box<dyn std::error::Error>;

const WIDTH: u32 = 1400;
const OK: RGBColor = RGBColor(46, 125, 50);
const FAILED: RGBColor = RGBColor(198, 40, 40);
const UNKNOWN: RGBColor = RGBColor(239, 108, 0);
const FAULT: RGBColor = RGBColor(244, 180, 0);
const FLAGGED: RGBColor = RGBColor(106, 27, 154);

fn colour(status: Status) -> RGBColor {
    match status {
        Status::Ok => OK,
        Status::Fail => FAILED,
        Status::Unknown => UNKNOWN,
    }
}

/// The run's length in seconds: the last completion or heal.
fn end_seconds(ops: &[Op], faults: &[FaultRecord]) -> f64 {
    ops.iter()
        .map(|o| o.complete_ms)
        .chain(faults.iter().filter_map(|f| f.end_ms))
        .fold(1000.0, f64::max)
        / 1000.0
}

/// A fault's span in seconds (one never healed lasts to the end).
fn span(fault: &FaultRecord, end: f64) -> (f64, f64) {
    (
        fault.start_ms / 1000.0,
        fault.end_ms.map_or(end, |e| e / 1000.0),
    )
}

/// Draws into an SVG string of `height` pixels.
fn svg(
    height: u32,
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), PlotError>,
) -> Result<String, PlotError> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    Ok(out)
}

/// The series' legend, in the upper right corner.
fn legend<'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
) -> Result<(), PlotError> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Latency of every operation of `kind` against when it was invoked, on a log
/// scale, coloured by outcome.
pub fn latency(ops: &[Op], faults: &[FaultRecord], kind: OpKind) -> Result<String, PlotError> {
    let end = end_seconds(ops, faults);
    let of_kind: Vec<&Op> = ops.iter().filter(|o| o.kind == kind).collect();
    let top = of_kind
        .iter()
        .map(|o| o.complete_ms - o.invoke_ms)
        .fold(10.0, f64::max)
        * 1.5;
    let name = match kind {
        OpKind::Read => "reads",
        OpKind::Write => "writes",
        OpKind::Delete => "deletes",
    };
    svg(300, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(format!("Latency of {name}"), ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..end, (0.1..top).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("seconds since the start")
            .y_desc("latency, ms")
            .draw()?;
        chart.draw_series(faults.iter().map(|f| {
            let (a, b) = span(f, end);
            Rectangle::new([(a, 0.1), (b, top)], FAULT.mix(0.15).filled())
        }))?;
        for status in [Status::Ok, Status::Fail, Status::Unknown] {
            let label = match status {
                Status::Ok => "ok",
                Status::Fail => "failed",
                Status::Unknown => "unknown",
            };
            let points = of_kind.iter().filter(|o| o.status == status).map(|o| {
                Circle::new(
                    (o.invoke_ms / 1000.0, (o.complete_ms - o.invoke_ms).max(0.1)),
                    2,
                    colour(status).filled(),
                )
            });
            chart
                .draw_series(points)?
                .label(label)
                .legend(move |(x, y)| Circle::new((x, y), 3, colour(status).filled()));
        }
        legend(&mut chart)
    })
}

/// Operations completed per second, by outcome.
pub fn throughput(ops: &[Op], faults: &[FaultRecord]) -> Result<String, PlotError> {
    let end = end_seconds(ops, faults);
    let seconds = end.ceil() as usize + 1;
    let mut counts = vec![[0u32; 3]; seconds];
    for op in ops {
        let second = ((op.complete_ms / 1000.0) as usize).min(seconds - 1);
        let slot = match op.status {
            Status::Ok => 0,
            Status::Fail => 1,
            Status::Unknown => 2,
        };
        counts[second][slot] += 1;
    }
    let top = counts
        .iter()
        .flat_map(|c| c.iter())
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.2;
    svg(260, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("Throughput", ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..end, 0.0..top)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the start")
            .y_desc("operations per second")
            .draw()?;
        chart.draw_series(faults.iter().map(|f| {
            let (a, b) = span(f, end);
            Rectangle::new([(a, 0.0), (b, top)], FAULT.mix(0.15).filled())
        }))?;
        for (slot, (label, status)) in [
            ("ok", Status::Ok),
            ("failed", Status::Fail),
            ("unknown", Status::Unknown),
        ]
        .into_iter()
        .enumerate()
        {
            let line = counts
                .iter()
                .enumerate()
                .map(|(s, c)| (s as f64 + 0.5, f64::from(c[slot])));
            chart
                .draw_series(LineSeries::new(line, colour(status).stroke_width(2)))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], colour(status).stroke_width(2))
                });
        }
        legend(&mut chart)
    })
}

/// One row per fault kind, a bar per fault: the labels are the rows' names,
/// so they never overlap however dense the faults.
pub fn faults(ops: &[Op], faults: &[FaultRecord]) -> Result<String, PlotError> {
    let end = end_seconds(ops, faults);
    let mut kinds: Vec<&str> = Vec::new();
    for fault in faults {
        if !kinds.contains(&fault.kind.as_str()) {
            kinds.push(&fault.kind);
        }
    }
    let rows = kinds.len().max(1);
    let height = 60 + 22 * rows as u32;
    let names: Vec<String> = kinds.iter().map(|k| (*k).to_owned()).collect();
    svg(height, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("Faults", ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(200)
            .build_cartesian_2d(0.0..end, 0.0..rows as f64)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(rows * 2 + 1)
            .y_label_formatter(&|y| {
                let row = y - 0.5;
                if row >= 0.0 && (row - row.round()).abs() < 1e-6 {
                    names.get(row.round() as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .x_desc("seconds since the start")
            .draw()?;
        chart.draw_series(faults.iter().map(|f| {
            let row = kinds.iter().position(|k| *k == f.kind).unwrap_or(0) as f64;
            let (a, b) = span(f, end);
            Rectangle::new(
                [(a, row + 0.15), (b.max(a + end / 1000.0), row + 0.85)],
                FAULT.filled(),
            )
        }))?;
        Ok(())
    })
}

/// One lane per client, each operation a line from invocation to completion
/// in its outcome's colour; operations in `flagged` (anomalies, lost writes)
/// ringed.
pub fn timeline(ops: &[Op], faults: &[FaultRecord], flagged: &[&str]) -> Result<String, PlotError> {
    let end = end_seconds(ops, faults);
    let clients = ops.iter().map(|o| o.client).max().map_or(1, |c| c + 1);
    let height = 80 + 14 * clients as u32;
    // Lanes sit on whole numbers, so that the labels, drawn at whole numbers, name them.
    let lanes = -0.5..clients as f64 - 0.5;
    svg(height, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("Operations by client", ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..end, lanes.clone())?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(clients as usize * 2 + 1)
            .y_label_formatter(&|y| {
                let lane = y.round();
                if (y - lane).abs() < 1e-6 && lane >= 0.0 && lane < clients as f64 {
                    format!("client {lane:.0}")
                } else {
                    String::new()
                }
            })
            .x_desc("seconds since the start")
            .draw()?;
        chart.draw_series(faults.iter().map(|f| {
            let (a, b) = span(f, end);
            Rectangle::new([(a, lanes.start), (b, lanes.end)], FAULT.mix(0.15).filled())
        }))?;
        chart.draw_series(ops.iter().map(|o| {
            let y = o.client as f64;
            let width = if o.status == Status::Ok { 2 } else { 5 };
            PathElement::new(
                vec![
                    (o.invoke_ms / 1000.0, y),
                    (
                        (o.complete_ms / 1000.0).max(o.invoke_ms / 1000.0 + end / 2000.0),
                        y,
                    ),
                ],
                colour(o.status).stroke_width(width),
            )
        }))?;
        chart.draw_series(
            ops.iter()
                .filter(|o| o.trace_id.as_deref().is_some_and(|t| flagged.contains(&t)))
                .map(|o| {
                    Circle::new(
                        (o.invoke_ms / 1000.0, o.client as f64),
                        6,
                        FLAGGED.stroke_width(2),
                    )
                }),
        )?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u64, kind: OpKind, at: (f64, f64), status: Status) -> Op {
        Op {
            client,
            keyspace: "s".into(),
            key: "k".into(),
            kind,
            value: None,
            observed: None,
            found: false,
            invoke_ms: at.0,
            complete_ms: at.1,
            status,
            error: None,
            trace_id: Some(format!("t{client}")),
            supersedes: Vec::new(),
        }
    }

    #[test]
    fn every_chart_is_an_svg_that_names_its_axes_and_faults() {
        let ops = vec![
            op(0, OpKind::Write, (100.0, 105.0), Status::Ok),
            op(1, OpKind::Write, (2000.0, 7000.0), Status::Unknown),
            op(1, OpKind::Read, (7100.0, 7102.0), Status::Fail),
        ];
        let faults = vec![FaultRecord {
            kind: "partition-halves".into(),
            target: "[a] | [b]".into(),
            start_ms: 1500.0,
            end_ms: Some(6000.0),
            kill: false,
        }];
        let latency = latency(&ops, &faults, OpKind::Write).expect("latency");
        assert!(latency.starts_with("<svg") && latency.contains("latency, ms"));
        assert!(latency.contains("unknown"), "the legend names the outcomes");
        let throughput = throughput(&ops, &faults).expect("throughput");
        assert!(throughput.contains("operations per second"));
        let faults_chart = super::faults(&ops, &faults).expect("faults");
        assert!(
            faults_chart.contains("partition-halves"),
            "rows are named by kind"
        );
        let timeline = timeline(&ops, &faults, &["t1"]).expect("timeline");
        assert!(timeline.contains("client 1"));
        assert!(
            timeline.to_lowercase().contains("#6a1b9a"),
            "flagged operations are ringed"
        );
        let unflagged = super::timeline(&ops, &faults, &[]).expect("timeline");
        assert!(!unflagged.to_lowercase().contains("#6a1b9a"));
    }
}
