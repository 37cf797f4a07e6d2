use super::*;
use report::markdown;

fn run(side: &str, params: i64, ms: &[f64], rss: f64) -> StepRun {
    // Page faults per step: 10 per MiB of peak, something to tell the sides apart by.
    StepRun {
        side: side.into(),
        params: Some(params),
        step_ms: ms.to_vec(),
        peak_rss_mib: Some(rss),
        faults_per_step: Some(rss / 10.0),
        ..StepRun::default()
    }
}

fn times(ms: &[f64]) -> StepRun {
    StepRun {
        step_ms: ms.to_vec(),
        ..StepRun::default()
    }
}

fn peak(gflops: f64) -> MatmulRun {
    MatmulRun {
        gflops: Some(gflops),
        ..MatmulRun::default()
    }
}

#[test]
fn a_case_row_compares_medians_and_the_table_says_whether_the_target_is_met() {
    let case = CASES[0];
    let ours = [
        run("elbo", 10, &[4.0, 4.0], 100.0),
        run("elbo", 10, &[5.0], 120.0),
    ];
    let default = [run("pytorch", 10, &[6.0, 5.0, 7.0], 600.0)];
    let fused = [run("pytorch", 10, &[4.0], 610.0)];
    let row = case_row(&case, 1, &ours, &default, &fused).unwrap();
    assert_eq!(row.speedup, 1.5);
    assert_eq!(row.speedup_vs_fused, 1.0);
    assert_eq!(row.elbo_peak_rss_mib, 120.0);
    // Medians of the runs' own counts: elbo 10 and 12, PyTorch 60.
    assert_eq!(row.elbo_faults_per_step, Some(11.0));
    assert_eq!(row.pytorch_faults_per_step, Some(60.0));
    let report = Report {
        machine: Machine {
            cpu: "test cpu".into(),
            cores: 2,
            loadavg_at_end: "0.1".into(),
        },
        command: "bench --with-pytorch".into(),
        unix_time: 0,
        protocol: Protocol {
            rounds: 1,
            warmup: 1,
            reps: 1,
            steps: 1,
        },
        rows: vec![
            Row::Case(Box::new(row)),
            Row::Matmul(MatmulRow {
                threads: 1,
                elbo: peak(90.0),
            }),
        ],
    };
    let md = markdown(&report);
    assert!(md.contains("**1.50x**"), "{md}");
    assert!(md.contains("1.25x met"), "{md}");
    assert!(md.contains("| 120 / 600 | 11 / 60 |"), "{md}");
    assert!(md.contains("90.0 GFLOP/s"), "{md}");
}

#[test]
fn the_unet_step_efficiency_is_three_forwards_over_the_matmul_peak() {
    let reference = [StepRun {
        forward_flops_per_example: Some(5e8),
        ..StepRun::default()
    }];
    let step = times(&[1000.0]);
    let one = std::slice::from_ref(&step);
    let mut row = case_row(&CASES[2], 1, one, one, one).unwrap();
    assert_eq!((row.task.as_str(), row.batch), ("train", 64));
    assert_eq!(row.elbo_ms.median, 1000.0);
    // Three rounds: each run's median step over the peak measured just before it.
    let ours = [
        times(&[900.0, 1000.0, 1100.0]),
        times(&[2000.0]),
        times(&[1000.0]),
    ];
    let peaks = [peak(192.0), peak(96.0), peak(120.0)];
    let e = efficiency(&row, &reference, &ours, &peaks).unwrap();
    // 3 x 5e8 x 64 FLOPs in 1 s = 96 GFLOP/s (the row's median step).
    assert_eq!(e.elbo_gflops, 96.0);
    // Rounds: 96/192 = 0.5, 48/96 = 0.5, 96/120 = 0.8; median 0.5.
    assert_eq!(e.efficiency_per_round, [0.5, 0.5, 0.8]);
    assert_eq!(e.efficiency, 0.5);
    assert_eq!(e.matmul_peak_gflops, 120.0);
    assert_eq!(e.efficiency_rounds[1].elbo_gflops, 48.0);
    assert_eq!(e.efficiency_rounds[1].matmul_peak_gflops, 96.0);
    // A round whose peak printed no GFLOP/s is left out of the pairs.
    let gaps = [peak(192.0), MatmulRun::default(), peak(120.0)];
    let e = efficiency(&row, &reference, &ours, &gaps).unwrap();
    assert_eq!(e.efficiency_per_round, [0.5, 0.8]);
    // Sampling has no efficiency, nor has a model without a FLOP count.
    row.task = "sample".into();
    assert_eq!(efficiency(&row, &reference, &ours, &peaks), None);
    row.task = "train".into();
    assert_eq!(efficiency(&row, &ours, &ours, &peaks), None);
}

#[test]
fn the_data_share_is_a_batch_over_a_batch_plus_a_step() {
    let share = data_share(&times(&[1.0, 3.0, 1.0]), 9.0).unwrap();
    assert_eq!(share.elbo_data_ms, 1.0);
    assert_eq!(share.data_share, 0.1);
    assert_eq!(data_share(&times(&[]), 9.0), None);
}

#[test]
fn different_parameter_counts_are_refused() {
    let ours = [run("elbo", 10, &[4.0], 1.0)];
    let theirs = [run("pytorch", 11, &[4.0], 1.0)];
    let err = case_row(&CASES[0], 1, &ours, &theirs, &theirs).unwrap_err();
    assert!(err.to_string().contains("must be the same model"), "{err}");
    assert!(err.to_string().contains("Some(10)"), "{err}");
}

#[test]
fn a_side_without_times_is_named() {
    let ours = [run("elbo", 10, &[], 1.0)];
    let theirs = [run("pytorch", 10, &[4.0], 1.0)];
    let err = case_row(&CASES[1], 1, &ours, &theirs, &theirs).unwrap_err();
    assert_eq!(
        err.to_string(),
        "elbo reported no usable times for hvae-ladder"
    );
}
