"""Figures the fault campaigns collect, printed as one summary table at the end of the
test session (see ``pytest_terminal_summary`` in conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CampaignTotals:
    """Totals of the crash runs and the load figures of this session."""

    crash_runs: list[dict[str, int]] = field(default_factory=list)
    load: list[tuple[str, str]] = field(default_factory=list)

    def table(self) -> list[str]:
        lines: list[str] = []
        if self.crash_runs:
            keys = list(self.crash_runs[0])
            lines.append(f"{'crash campaign (' + str(len(self.crash_runs)) + ' runs)':36} total")
            for key in keys:
                values = [run[key] for run in self.crash_runs]
                span = f"  (per run {min(values)}-{max(values)})" if len(values) > 1 else ""
                lines.append(f"  {key.replace('_', ' '):34} {sum(values)}{span}")
        if self.load:
            lines.append("load")
            lines.extend(f"  {label:34} {value}" for label, value in self.load)
        return lines


TOTALS = CampaignTotals()
