// The Overview's time chart: uPlot (about 22 KB gzipped), the period's series and,
// with compare on, the previous period's drawn dashed under it, bucket by bucket.
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
  const xs = s.labels.map(labelToSeconds);
  const hourly = s.labels.some((l) => l.includes(' '));
  const series: uPlot.Series[] = [
    {},
    { label: s.metricLabel, stroke: '#4f46e5', width: 2, fill: 'rgba(79, 70, 229, 0.08)' },
  ];
  const data: uPlot.AlignedData = [xs, s.current];
  if (s.previous) {
    series.push({ label: 'Previous period', stroke: '#6b7280', width: 1.5, dash: [6, 4] });
    (data as number[][]).push(s.previous);
  }
  const width = () => Math.max(280, target.clientWidth || 600);
  const plot = new uPlot(
    {
      width: width(),
      height: 240,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), 'Etc/UTC'),
      series,
      scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, Math.max(1, max * 1.1)] } },
      axes: [
        { stroke: '#374151', values: hourly ? '{HH}:{mm}' : '{MMM} {D}' },
        { stroke: '#374151', size: 50 },
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
