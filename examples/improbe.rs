use std::time::Instant;
fn sq(x: u64) -> u64 {
    x.wrapping_mul(x)
}
fn main() {
    shmpool::init();
    let pool = shmpool::Pool::new(2).unwrap();
    let mut a = Vec::new();
    let mut b = Vec::new();
    let mut c = Vec::new();
    for _ in 0..15 {
        let t = Instant::now();
        let s: u64 = pool
            .imap_unordered(sq, 0..100_000u64)
            .unwrap()
            .map(Result::unwrap)
            .fold(0, u64::wrapping_add);
        std::hint::black_box(s);
        a.push((100_000.0 / t.elapsed().as_secs_f64() / 1e3) as u64);
        let t = Instant::now();
        let hs: Vec<_> = (0..100_000u64)
            .map(|i| pool.apply_async(sq, (i,)).unwrap())
            .collect();
        for h in &hs {
            h.get(None).unwrap();
        }
        b.push((100_000.0 / t.elapsed().as_secs_f64() / 1e3) as u64);
        let t = Instant::now();
        for i in 0..1000u64 {
            pool.apply(sq, (i,)).unwrap();
        }
        c.push((t.elapsed().as_secs_f64() * 1e3) as u64);
    }
    a.sort();
    b.sort();
    c.sort();
    println!("imap_unordered median {} k/s {:?}\napply_async median {} k/s {:?}\napply x1000 median {} ms", a[7], a, b[7], b, c[7]);
}
