"""Time-series forecasting on a real series: monthly atmospheric CO2 at Mauna Loa.

    python examples/forecast.py            # about a minute on 2 CPU cores
    python examples/forecast.py --smoke

The series ships inside statsmodels (statsmodels.datasets.co2: weekly CO2 in ppm,
1958-2001, from the Scripps Institution of Oceanography), so it runs offline once
statsmodels is installed (`pip install statsmodels`; see the top README's Dependencies).
Weekly values are averaged per month (gaps interpolated). The last 5 years are held out;
each cell (RNN, LSTM, GRU from rnnkernels) learns to predict next month's change from the
past 36 months, then forecasts the 60 held-out months recursively from the last observed
window, feeding its own predictions back. Baseline: the seasonal naive forecast (each
month as it was 12 months before the forecast origin, repeated), and the seasonal naive
with drift (plus the average yearly rise). Scores: RMSE in ppm over the 60 months.
Writes results.{jsonl,md} and a forecast plot (PNG).
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

import rnnkernels

from _common import (
    Progress, add_common_arguments, make_rnn, parameter_count, pyplot, save_figure, write_results)

HOLDOUT, WINDOW, SEASON = 60, 36, 12


def load_monthly_co2() -> tuple[list[str], torch.Tensor]:
    import statsmodels.api as sm

    weekly = sm.datasets.co2.load_pandas().data["co2"]
    monthly = weekly.resample("MS").mean().interpolate()
    return [d.strftime("%Y-%m") for d in monthly.index], torch.tensor(monthly.values, dtype=torch.float32)


class Forecaster(nn.Module):
    def __init__(self, cell, hidden):
        super().__init__()
        self.rnn = make_rnn(cell, 1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):  # x [B, WINDOW] of scaled changes -> next change [B]
        return self.head(self.rnn(x[:, :, None])[0][:, -1]).squeeze(-1)


def seasonal_naive(history: torch.Tensor, horizon: int, drift: bool) -> torch.Tensor:
    last_season = history[-SEASON:]
    reps = torch.cat([last_season] * math.ceil(horizon / SEASON))[:horizon]
    if not drift:
        return reps
    yearly_rise = (history[-1] - history[0]) / (len(history) - 1) * SEASON
    years_ahead = torch.arange(horizon) // SEASON + 1
    return reps + yearly_rise * years_ahead


@torch.no_grad()
def forecast_holdout(model, scaled, scale: float, level: float, device) -> torch.Tensor:
    """The HOLDOUT months after the training series, each step's prediction fed back."""
    window = scaled[-WINDOW:].clone().to(device)
    forecast = []
    for _ in range(HOLDOUT):
        step = model(window[None])[0]
        level += float(step) * scale
        forecast.append(level)
        window = torch.cat([window[1:], step.view(1)])
    return torch.tensor(forecast)


def rmse(a, b) -> float:
    return float(((a - b) ** 2).mean().sqrt())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, "examples/results/forecast")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()
    if args.smoke:
        args.hidden, args.steps, args.batch = 8, 5, 8
    months, series = load_monthly_co2()
    train, test = series[:-HOLDOUT], series[-HOLDOUT:]
    changes = train[1:] - train[:-1]
    scale = float(changes.std())
    scaled = changes / scale
    device = torch.device(args.device)
    baselines = {"seasonal naive": seasonal_naive(train, HOLDOUT, drift=False),
                 "seasonal naive with drift": seasonal_naive(train, HOLDOUT, drift=True)}
    records = [{"model": name, "rmse": rmse(f, test), "forecast": f.tolist()}
               for name, f in baselines.items()]
    progress = Progress(len(args.cell) * args.steps, "forecast")
    for cell in args.cell:
        torch.manual_seed(args.seed)
        generator = torch.Generator().manual_seed(args.seed)
        model = Forecaster(cell, args.hidden).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        for _ in range(args.steps):
            starts = torch.randint(0, scaled.numel() - WINDOW, (args.batch,), generator=generator)
            idx = starts[:, None] + torch.arange(WINDOW + 1)
            chunk = scaled[idx].to(device)
            loss = nn.functional.mse_loss(model(chunk[:, :-1]), chunk[:, -1])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            progress.update(1, f"{cell} loss {loss.item():.4f}")
        model.eval()
        forecast = forecast_holdout(model, scaled, scale, float(train[-1]), device)
        # int8 inference of the trained model (rnnkernels.quantize_dynamic), on the CPU.
        int8_model = rnnkernels.quantize_dynamic(model.to("cpu"))
        int8_forecast = forecast_holdout(int8_model, scaled, scale, float(train[-1]),
                                         torch.device("cpu"))
        records.append({"model": cell.upper(), "rmse": rmse(forecast, test),
                        "forecast": forecast.tolist(), "parameters": parameter_count(model.rnn),
                        "rmse_int8": rmse(int8_forecast, test),
                        "int8_change": rmse(int8_forecast, test) / rmse(forecast, test) - 1})
    md = [f"Monthly CO2 at Mauna Loa ({months[0]} to {months[-1]}), forecast of the last "
          f"{HOLDOUT} months ({months[-HOLDOUT]} on) from the months before; RMSE in ppm:\n",
          "| model | RMSE (ppm) | int8 (rnnkernels.quantize_dynamic) |", "| --- | --- | --- |"]
    md += [f"| {r['model']} | {r['rmse']:.3f} | "
           + (f"{r['rmse_int8']:.3f} ({100 * r['int8_change']:+.2f}%) |" if "rmse_int8" in r
              else "- |") for r in records]
    md.append(f"\n(cells: hidden {args.hidden}, window {WINDOW} months, {args.steps} Adam steps of "
              f"batch {args.batch}, seed {args.seed})\n")
    write_results(args.out, "results", records, "\n".join(md))
    plt = pyplot()
    if plt is not None:
        fig, ax = plt.subplots(figsize=(8, 4))
        shown = 120
        x_hist = range(len(series) - HOLDOUT - shown, len(series) - HOLDOUT)
        x_test = range(len(series) - HOLDOUT, len(series))
        ax.plot(x_hist, train[-shown:], color="black", lw=1, label="observed (training)")
        ax.plot(x_test, test, color="black", lw=2, label="observed (held out)")
        for r in records:
            ax.plot(x_test, r["forecast"], lw=1, ls="--" if "naive" in r["model"] else "-",
                    label=f"{r['model']} ({r['rmse']:.2f} ppm)")
        ticks = list(range(x_hist[0], len(series), 24))
        ax.set_xticks(ticks, [months[t] for t in ticks], fontsize=7)
        ax.set_ylabel("CO2 (ppm)")
        ax.legend(fontsize=7)
        save_figure(fig, f"{args.out}/forecast.png")


if __name__ == "__main__":
    main()
