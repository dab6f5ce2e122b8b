// Time charts: uPlot (about 22 KB gzipped). The Overview's draws the period's series and,
// with compare on, the previous period's dashed under it, bucket by bucket; `drawLines`
// draws any number of lines (the trends builder's series, breakdowns and formula).
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

/** `YYYY-MM-DD` or `YYYY-MM-DD HH:MM:SS` (the query's wall-clock labels) → seconds,
 * read as UTC so that the axis shows the labels as they are. */
function labelToSeconds(label: string): number {
  const [date, time = '00:00:00'] = label.split(' ');
  return Date.parse(`${date}T${time}Z`) / 1000;
}

export interface Series {
  labels: string[];
  current: number[];
  previous: number[] | null;
  metricLabel: string;
}

export function drawChart(target: HTMLElement, s: Series): () => void {
  const lines: Line[] = [{ label: s.metricLabel, data: s.current, color: '#4f46e5', fill: true }];
  if (s.previous) lines.push({ label: 'Previous period', data: s.previous, color: '#6b7280', dashed: true });
  return drawLines(target, s.labels, lines);
}

export interface Line {
  label: string;
  data: (number | null)[];
  color: string;
  dashed?: boolean;
  fill?: boolean;
  /** Drawn against the right-hand axis (a formula beside the counts it is made of). */
  right?: boolean;
}

/** Colours for lines, distinct and readable on white; the previous period of a line is
 * its colour dashed. */
export const PALETTE = ['#4338ca', '#047857', '#b45309', '#b91c1c', '#0e7490', '#6d28d9', '#be185d', '#4d7c0f', '#475569', '#92400e'];

export function drawLines(target: HTMLElement, labels: string[], lines: Line[]): () => void {
  const xs = labels.map(labelToSeconds);
  const hourly = labels.some((l) => l.includes(' '));
  const series: uPlot.Series[] = [
    {},
    ...lines.map((l) => ({
      label: l.label,
      stroke: l.color,
      width: l.dashed ? 1.5 : 2,
      dash: l.dashed ? [6, 4] : undefined,
      fill: l.fill ? 'rgba(79, 70, 229, 0.08)' : undefined,
      spanGaps: false,
      scale: l.right ? 'right' : 'y',
    })),
  ];
  const right = lines.some((l) => l.right);
  // One tick per bucket, or every k-th when there are many: uPlot's own ticks fall
  // between buckets (three "Nov 27" for one day).
  const every = Math.max(1, Math.ceil(xs.length / 12));
  const ticks = xs.filter((_, i) => i % every === 0);
  const range = (_u: uPlot, min: number | null, max: number | null): uPlot.Range.MinMax => [
    Math.min(0, min ?? 0),
    Math.max(1, (max ?? 0) * 1.1),
  ];
  const data = [xs, ...lines.map((l) => l.data)] as uPlot.AlignedData;
  const width = () => Math.max(280, target.clientWidth || 600);
  const plot = new uPlot(
    {
      width: width(),
      height: 240,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), 'Etc/UTC'),
      series,
      scales: { x: { time: true }, y: { range }, ...(right ? { right: { range } } : {}) },
      axes: [
        { stroke: '#374151', values: hourly ? '{HH}:{mm}' : '{MMM} {D}', splits: xs.length > 1 ? () => ticks : undefined },
        { stroke: '#374151', size: 50 },
        ...(right ? [{ stroke: '#92400e', size: 50, scale: 'right', side: 1 as const, grid: { show: false } }] : []),
      ],
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
    },
    data,
    target,
  );
  const onResize = () => plot.setSize({ width: width(), height: 240 });
  window.addEventListener('resize', onResize);
  return () => {
    window.removeEventListener('resize', onResize);
    plot.destroy();
  };
}
