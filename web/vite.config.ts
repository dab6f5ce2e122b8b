import { defineConfig } from 'vite';

// The build goes to web/dist, which crates/server/build.rs embeds in the binary.
export default defineConfig({
  publicDir: false,
  build: {
    outDir: 'dist',
    assetsDir: 'assets',
    emptyOutDir: true,
    target: 'es2022',
    // The whole app is one small chunk; a warning past 150 KB (the budget is
    // gzipped, this is raw, so it warns early).
    chunkSizeWarningLimit: 150,
  },
});
