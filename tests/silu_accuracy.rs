//! The vectorized SiLU of every ISA (x / (1 + e^-x) with a polynomial e^x) against f64 on a
//! dense grid, special values and the whole f32 range's extremes. Bound: 4 ulp of the
//! f32-rounded exact value, or 1e-36 absolute below x = -88 where the result underflows.

use nfnet_runtime::Isa;
use nfnet_test_models::tiny;

fn ulp_error(got: f32, exact: f64) -> f64 {
    let want = exact as f32;
    if got == want {
        return 0.0;
    }
    let ulp = (f32::from_bits(want.abs().to_bits() + 1) - want.abs()) as f64;
    (got as f64 - exact).abs() / ulp
}

#[test]
fn silu_is_within_4_ulp_of_f64_on_every_isa() {
    let mut x: Vec<f32> = (-200_000..=200_000).map(|i| i as f32 * 5e-4).collect();
    x.extend([
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        87.0,
        88.0,
        88.7,
        89.0,
        -87.0,
        -88.0,
        -100.0,
        -103.0,
        1e4,
        -1e4,
        f32::MAX,
        f32::MIN,
    ]);
    // A length that is not a multiple of any vector width exercises the tails.
    x.push(0.3);
    for isa in tiny::ISAS.iter().copied().filter(|i| i.is_available()) {
        let mut out = vec![0.0f32; x.len()];
        tiny::silu(isa, &x, &mut out).unwrap();
        let mut worst = (0.0, 0.0f32);
        for (&xi, &yi) in x.iter().zip(&out) {
            let exact = xi as f64 / (1.0 + (-(xi as f64)).exp());
            let e = ulp_error(yi, exact);
            let tiny_abs = xi < -88.0 && (yi as f64 - exact).abs() < 1e-36;
            if e > worst.0 && !tiny_abs {
                worst = (e, xi);
            }
        }
        assert!(worst.0 <= 4.0, "{isa}: {} ulp at x = {}", worst.0, worst.1);
        println!("{isa}: worst {:.2} ulp at x = {}", worst.0, worst.1);
    }
    assert!(tiny::silu(Isa::Scalar, &[1.0], &mut [0.0]).is_ok());
}
