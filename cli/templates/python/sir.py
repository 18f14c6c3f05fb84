"""An epidemic (SIR) model swept over the infection rate.

Run with two arguments, START and END: for each step i in [START, END) the
infection rate is beta = 0.10 + 0.01 * i (recovery rate 0.10, one million
people, ten infected on day 0). Prints one CSV line per rate: the peak of
infections, the day it comes, and how many were ever infected.
"""

import sys

POPULATION = 1_000_000
GAMMA = 0.10
DAYS = 365
STEPS_PER_DAY = 10


def simulate(beta):
    s, i, r = POPULATION - 10.0, 10.0, 0.0
    dt = 1.0 / STEPS_PER_DAY
    peak, peak_day = i, 0
    for step in range(DAYS * STEPS_PER_DAY):
        infections = beta * s * i / POPULATION * dt
        recoveries = GAMMA * i * dt
        s, i, r = s - infections, i + infections - recoveries, r + recoveries
        if i > peak:
            peak, peak_day = i, step // STEPS_PER_DAY
    return peak, peak_day, POPULATION - s


def main():
    start, end = int(sys.argv[1]), int(sys.argv[2])
    for index in range(start, end):
        beta = 0.10 + 0.01 * index
        peak, day, ever = simulate(beta)
        print(f"{beta:.2f},{peak:.0f},{day},{ever:.0f}")


if __name__ == "__main__":
    main()
