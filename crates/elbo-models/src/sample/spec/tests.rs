//! Tests of the sampler names: parsing, printing, refusals, kept timesteps.

use super::*;

#[test]
fn sampler_names_parse_and_print() {
    let _generator = crate::testing::generator_lock();
    for text in [
        "ancestral",
        "ddim-50",
        "ddim-100-eta=1",
        "ddim-20-quadratic",
        "ddim-20-logsnr",
        "dpm++1-10",
        "dpm++2m-15",
        "dpm++3m-10-karras",
        "dpm++2m-20-logsnr",
        "unipc-10",
        "unipc-8-karras",
        "ancestral-50",
        "ancestral-25-karras",
    ] {
        let s: SamplerSpec = text.parse().unwrap();
        assert_eq!(s.to_string(), text);
    }
    assert_eq!(
        "ddim-10-eta=0.5".parse::<SamplerSpec>().unwrap(),
        SamplerSpec::Ddim(Ddim {
            steps: 10,
            eta: 0.5,
            spacing: Spacing::Uniform
        })
    );
    assert_eq!(
        "dpm++2m-15".parse::<SamplerSpec>().unwrap(),
        SamplerSpec::DpmSolverPp(DpmSolverPp {
            steps: 15,
            order: 2,
            spacing: Spacing::Uniform
        })
    );
    for bad in [
        "ddpm",
        "ddim",
        "ddim-x",
        "ddim-+5",
        "ddim-5x",
        "ddim-5-cubic",
        "ddim-5-eta=0.5-eta=0.2",
        "dpm++2-15",
        "dpm++4m-15",
        "dpm++2m-15-eta=1",
        "unipc",
        "unipc-5-eta=1",
    ] {
        let err = bad.parse::<SamplerSpec>().unwrap_err().to_string();
        assert!(
            err.contains("expected ancestral[-S], ddim-S"),
            "{bad}: {err}"
        );
    }
    // eta is a number in [0, 1]: outside it, a range error naming the value.
    for (bad, found) in [
        ("ddim-10-eta=1e308", "1e308"),
        ("ddim-10-eta=1.5", "1.5"),
        ("ddim-5-eta=-1", "-1"),
        ("ddim-5-eta=NaN", "NaN"),
        ("ddim-5-eta=inf", "inf"),
    ] {
        let err = bad.parse::<SamplerSpec>().unwrap_err().to_string();
        assert!(
            err.contains("eta must be in [0, 1]") && err.contains(&format!("found {found}")),
            "{bad}: {err}"
        );
    }
    let err = "ddim-5-eta=x"
        .parse::<SamplerSpec>()
        .unwrap_err()
        .to_string();
    assert!(err.contains("eta must be a number in [0, 1]"), "{err}");
    // EDM's samplers: Karras's levels by default, the churn's options in order.
    for text in [
        "heun-18",
        "euler-50",
        "heun-10-uniform",
        "euler-20-logsnr",
        "heun-18-churn=40-tmin=0.05-tmax=50-snoise=1.003",
        "heun-18-churn=1",
    ] {
        let s: SamplerSpec = text.parse().unwrap();
        assert_eq!(s.to_string(), text);
    }
    assert_eq!(
        "heun-18-karras".parse::<SamplerSpec>().unwrap().to_string(),
        "heun-18"
    );
    let SamplerSpec::Edm(edm) = "heun-18-churn=40-snoise=1.003".parse().unwrap() else {
        panic!("not EDM's")
    };
    assert_eq!(edm.spacing, Spacing::Karras);
    assert_eq!(
        edm.churn,
        Some(EdmChurn {
            churn: 40.0,
            tmin: 0.0,
            tmax: None,
            noise: 1.003
        })
    );
    assert_eq!("heun-18".parse::<SamplerSpec>().unwrap().family(), "heun");
    // Churn only where there is one, shaped only when it is on, within its range.
    for (bad, says) in [
        ("ddim-50-churn=40", "churn of EDM's stochastic sampler"),
        ("unipc-10-tmin=0.1", "churn of EDM's stochastic sampler"),
        ("heun-18-tmin=0.05", "give -churn=S"),
        ("heun-18-churn=-1", "S_churn must lie in [0, inf)"),
        ("heun-18-churn=NaN", "S_churn"),
        (
            "heun-18-churn=40-tmin=1-tmax=0.5",
            "S_tmax must lie in [S_tmin, inf]",
        ),
        ("heun-18-churn=40-churn=3", "expected ancestral[-S]"),
        ("heun-18-eta=1", "expected ancestral[-S]"),
        ("heun-18-churn=x", "churn must be a number"),
    ] {
        let err = bad.parse::<SamplerSpec>().unwrap_err().to_string();
        assert!(err.contains(says), "{bad}: {err}");
    }
    let err = "ddim-10-karras-logsnr"
        .parse::<SamplerSpec>()
        .unwrap_err()
        .to_string();
    assert!(err.contains("names two spacings"), "{err}");
    // -0 is 0; an exponent's minus sign is the number's, not an option's.
    assert_eq!(
        "ddim-10-eta=-0".parse::<SamplerSpec>().unwrap().to_string(),
        "ddim-10"
    );
    assert_eq!(
        "ddim-10-eta=1e-1-karras".parse::<SamplerSpec>().unwrap(),
        SamplerSpec::Ddim(Ddim {
            steps: 10,
            eta: 0.1,
            spacing: Spacing::Karras
        })
    );
}

#[test]
fn families_group_a_sweep_by_sampler() {
    let _generator = crate::testing::generator_lock();
    let families: Vec<String> = SamplerSpec::sweep()
        .iter()
        .map(SamplerSpec::family)
        .collect();
    assert_eq!(families.iter().filter(|f| *f == "ddim").count(), 5);
    assert_eq!(families.iter().filter(|f| *f == "dpm++2m").count(), 4);
    assert_eq!(families.iter().filter(|f| *f == "unipc").count(), 4);
    let named = |text: &str| text.parse::<SamplerSpec>().unwrap().family();
    assert_eq!(named("ddim-10-eta=1-karras"), "ddim-eta=1-karras");
    assert_eq!(named("dpm++1-7-logsnr"), "dpm++1-logsnr");
    assert_eq!(named("ancestral"), "ancestral");
}

#[test]
fn kept_timesteps_rise_strictly_and_end_at_t() {
    let _generator = crate::testing::generator_lock();
    let linear = |big_t| elbo_math::NoiseSchedule::linear(big_t, 1e-4, 0.02).unwrap();
    let all = [
        Spacing::Uniform,
        Spacing::Quadratic,
        Spacing::LogSnr,
        Spacing::Karras,
    ];
    for spacing in all {
        for (big_t, count) in [(1000, 50), (1000, 1000), (10, 3), (7, 7), (1000, 1)] {
            let kept = kept_timesteps(&linear(big_t), count, spacing).unwrap();
            assert_eq!(kept.len(), count);
            assert_eq!(*kept.last().unwrap(), big_t, "{spacing:?} {big_t} {count}");
            assert!(kept[0] >= 1);
            assert!(kept.windows(2).all(|w| w[0] < w[1]), "{kept:?}");
        }
    }
    let quadratic = kept_timesteps(&linear(1000), 10, Spacing::Quadratic).unwrap();
    assert_eq!(quadratic[..3], [10, 40, 90]);
    // In noise level: denser near the data than uniform in time.
    let first_gap = |spacing| {
        let kept = kept_timesteps(&linear(1000), 20, spacing).unwrap();
        kept[1] - kept[0]
    };
    let (uniform, logsnr, karras) = (
        first_gap(Spacing::Uniform),
        first_gap(Spacing::LogSnr),
        first_gap(Spacing::Karras),
    );
    assert!(
        karras < uniform && logsnr < uniform,
        "{karras} {logsnr} {uniform}"
    );
    let err = kept_timesteps(&linear(100), 101, Spacing::Uniform)
        .unwrap_err()
        .to_string();
    assert!(err.contains("between 1 and T = 100"), "{err}");
}

/// A spec holds its sampler's own configuration, and its record in a checkpoint is
/// the one written before (the kind beside the sampler's fields).
#[test]
fn a_spec_records_its_sampler_as_before() {
    let spec: SamplerSpec = "dpm++2m-15-karras".parse().unwrap();
    assert_eq!(
        serde_json::to_value(spec).unwrap(),
        serde_json::json!({"kind": "dpm-solver-pp", "steps": 15, "order": 2, "spacing": "karras"})
    );
    assert_eq!(
        serde_json::to_value(SamplerSpec::default()).unwrap(),
        serde_json::json!({"kind": "ddim", "steps": 50, "eta": 0.0, "spacing": "uniform"})
    );
    for text in [
        "ancestral",
        "ddim-10-eta=0.5",
        "unipc-8-logsnr",
        "dpm++3m-12",
    ] {
        let spec: SamplerSpec = text.parse().unwrap();
        let back: SamplerSpec =
            serde_json::from_value(serde_json::to_value(spec).unwrap()).unwrap();
        assert_eq!(back, spec, "{text}");
    }
}
