//! Device profiles: what a simulated device measures and how its values evolve.
//!
//! Three kinds rotate across the fleet (device `i` gets kind `i % 3`):
//! - `env.temperature`: a room sensor; temperature (°C) and relative humidity (%)
//!   as bounded random walks around a per-device set point.
//! - `power.battery`: a battery pack; percent drains with use, a charger kicks in
//!   below 15 % and stops at 95 %, voltage follows the charge.
//! - `gps.position`: a vehicle; latitude/longitude advance along a wandering
//!   heading at a speed that drifts between 0 and 30 m/s.

use std::{
    collections::BTreeMap,
    time::{SystemTime, UNIX_EPOCH},
};

use rand::Rng;

use crate::proto::{reading::Value, Reading, Telemetry};

/// The kind of device, which fixes its category and readings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Environment,
    Battery,
    Gps,
}

impl Kind {
    /// The kind for device number `index`: the three kinds rotate.
    pub fn for_index(index: usize) -> Kind {
        match index % 3 {
            0 => Kind::Environment,
            1 => Kind::Battery,
            _ => Kind::Gps,
        }
    }

    /// The telemetry category this kind publishes.
    pub fn category(self) -> &'static str {
        match self {
            Kind::Environment => "env.temperature",
            Kind::Battery => "power.battery",
            Kind::Gps => "gps.position",
        }
    }

    /// The hardware model name carried in the device's `model` tag.
    pub fn model(self) -> &'static str {
        match self {
            Kind::Environment => "th-20",
            Kind::Battery => "bms-4",
            Kind::Gps => "trk-7",
        }
    }
}

/// Token tags for device `index`: its fleet (alternating north/south), model and kind.
pub fn tags_for(index: usize) -> BTreeMap<String, String> {
    let kind = Kind::for_index(index);
    let fleet = if index.is_multiple_of(2) {
        "north"
    } else {
        "south"
    };
    BTreeMap::from([
        ("fleet".to_owned(), fleet.to_owned()),
        ("model".to_owned(), kind.model().to_owned()),
        ("kind".to_owned(), kind.category().to_owned()),
    ])
}

/// The evolving state of one simulated device's sensors.
#[derive(Clone, Debug)]
pub struct Profile {
    kind: Kind,
    /// Next `Telemetry.seq`: from 1 (as uplink confirmations require), one more per
    /// generated message, across reconnects.
    seq: u64,
    state: State,
}

#[derive(Clone, Debug)]
enum State {
    Environment {
        set_point: f64,
        temperature: f64,
        humidity: f64,
    },
    Battery {
        percent: f64,
        charging: bool,
    },
    Gps {
        lat: f64,
        lon: f64,
        heading: f64,
        speed: f64,
    },
}

impl Profile {
    /// A fresh device of `kind` with randomised starting values.
    pub fn new<R: Rng + ?Sized>(kind: Kind, rng: &mut R) -> Self {
        let state = match kind {
            Kind::Environment => {
                let set_point = rng.random_range(18.0..26.0);
                State::Environment {
                    set_point,
                    temperature: set_point,
                    humidity: rng.random_range(35.0..60.0),
                }
            }
            Kind::Battery => State::Battery {
                percent: rng.random_range(40.0..100.0),
                charging: false,
            },
            Kind::Gps => State::Gps {
                // Around Oslo (north) … spread a few kilometres.
                lat: 59.91 + rng.random_range(-0.05..0.05),
                lon: 10.75 + rng.random_range(-0.05..0.05),
                heading: rng.random_range(0.0..std::f64::consts::TAU),
                speed: rng.random_range(0.0..20.0),
            },
        };
        Profile {
            kind,
            seq: 1,
            state,
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Advances the sensors by `dt_s` seconds and returns the next message.
    pub fn next<R: Rng + ?Sized>(&mut self, dt_s: f64, rng: &mut R) -> Telemetry {
        let dt = dt_s.clamp(0.0, 60.0);
        let readings = match &mut self.state {
            State::Environment {
                set_point,
                temperature,
                humidity,
            } => {
                // Random walk pulled gently back to the set point.
                *temperature += rng.random_range(-0.05..0.05) * dt.sqrt().max(0.1)
                    + (*set_point - *temperature) * 0.01;
                *temperature = temperature.clamp(-40.0, 85.0);
                *humidity = (*humidity + rng.random_range(-0.2..0.2)).clamp(5.0, 95.0);
                vec![
                    number("temperature", round(*temperature, 2), "Cel"),
                    number("humidity", round(*humidity, 1), "%"),
                ]
            }
            State::Battery { percent, charging } => {
                if *charging {
                    *percent += 0.5 * dt;
                    if *percent >= 95.0 {
                        *charging = false;
                    }
                } else {
                    *percent -= 0.02 * dt * rng.random_range(0.5..1.5);
                    if *percent <= 15.0 {
                        *charging = true;
                    }
                }
                *percent = percent.clamp(0.0, 100.0);
                // Li-ion: roughly 3.3 V empty to 4.2 V full.
                let voltage = 3.3 + 0.9 * *percent / 100.0 + if *charging { 0.05 } else { 0.0 };
                vec![
                    number("voltage", round(voltage, 3), "V"),
                    number("percent", round(*percent, 1), "%"),
                    Reading {
                        name: "charging".into(),
                        value: Some(Value::Flag(*charging)),
                        unit: String::new(),
                    },
                ]
            }
            State::Gps {
                lat,
                lon,
                heading,
                speed,
            } => {
                *heading =
                    (*heading + rng.random_range(-0.2..0.2)).rem_euclid(std::f64::consts::TAU);
                *speed = (*speed + rng.random_range(-1.0..1.0)).clamp(0.0, 30.0);
                let metres = *speed * dt;
                *lat += metres * heading.cos() / 111_320.0;
                let cos_lat = lat.to_radians().cos().max(0.01);
                *lon += metres * heading.sin() / (111_320.0 * cos_lat);
                *lat = lat.clamp(-89.9, 89.9);
                *lon = ((*lon + 180.0).rem_euclid(360.0)) - 180.0;
                vec![
                    number("lat", round(*lat, 6), "deg"),
                    number("lon", round(*lon, 6), "deg"),
                    number("speed", round(*speed, 2), "m/s"),
                ]
            }
        };
        let seq = self.seq;
        self.seq += 1;
        Telemetry {
            // The hub stamps the id from the token.
            device_id: String::new(),
            category: self.kind.category().to_owned(),
            timestamp_ms: now_ms(),
            seq,
            readings,
            received_ms: 0,
        }
    }
}

fn number(name: &str, value: f64, unit: &str) -> Reading {
    Reading {
        name: name.to_owned(),
        value: Some(Value::Number(value)),
        unit: unit.to_owned(),
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn kinds_rotate_and_values_stay_in_range() {
        let mut rng = StdRng::seed_from_u64(9);
        for i in 0..3 {
            let mut p = Profile::new(Kind::for_index(i), &mut rng);
            for n in 1..=10_000u64 {
                let t = p.next(1.0, &mut rng);
                assert_eq!(t.seq, n);
                assert_eq!(t.category, Kind::for_index(i).category());
                for r in &t.readings {
                    if let Some(Value::Number(v)) = r.value {
                        assert!(v.is_finite(), "{} = {v}", r.name);
                        match r.name.as_str() {
                            "humidity" | "percent" => assert!((0.0..=100.0).contains(&v)),
                            "voltage" => assert!((3.2..=4.3).contains(&v)),
                            "speed" => assert!((0.0..=30.0).contains(&v)),
                            "lat" => assert!((-90.0..=90.0).contains(&v)),
                            _ => {}
                        }
                    }
                }
            }
        }
        assert_eq!(tags_for(1)["fleet"], "south");
        assert_eq!(tags_for(2)["model"], "trk-7");
    }

    #[test]
    fn battery_charges_when_low() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut p = Profile::new(Kind::Battery, &mut rng);
        let mut saw_charging = false;
        for _ in 0..100_000 {
            let t = p.next(10.0, &mut rng);
            saw_charging |= t
                .readings
                .iter()
                .any(|r| r.value == Some(Value::Flag(true)));
        }
        assert!(saw_charging);
    }
}
