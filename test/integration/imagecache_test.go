package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/basalt-csi/basalt/pkg/provision"
	"github.com/basalt-csi/basalt/pkg/records"
	"github.com/basalt-csi/basalt/pkg/volumeid"
)

// cacheYAML is the test configuration with b-std (cluster 2, which lacks
// the golden images) keeping an image cache of at most maxCount entries.
func cacheYAML(maxCount int) string {
	return strings.Replace(configYAML(), "    zone: zone-b\n",
		fmt.Sprintf("    zone: zone-b\n    imageCache: {enabled: true, maxCount: %d}\n", maxCount), 1)
}

// makeGolden creates pool/name@snap in cluster 1 holding text, replacing a
// snapshot of that name (golden-image.sh rebuilds the image when the
// snapshot is absent), and removes it when the test ends.
func makeGolden(t *testing.T, name, text string) string {
	t.Helper()
	spec := "images/" + name + "@v1"
	dropGolden(t, name)
	if _, err := script(tctx(t), "golden-image.sh", c1.Conf, "images", name, "v1", "16", text); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dropGolden(t, name) })
	return spec
}

func dropGolden(t *testing.T, name string) {
	for _, args := range [][]string{{"snap", "unprotect", "images/" + name + "@v1"}, {"snap", "rm", "images/" + name + "@v1"}, {"rm", "images/" + name}} {
		_ = exec.Command("rbd", append([]string{"-c", c1.Conf}, args...)...).Run()
	}
}

// cacheImages lists the image-cache images in cluster 2's volumes pool.
func cacheImages(t *testing.T) []string {
	var out []string
	for _, img := range c2.images(t, "volumes") {
		if strings.HasPrefix(img, volumeid.CachePrefix) {
			out = append(out, img)
		}
	}
	sort.Strings(out)
	return out
}

// goldenTextOf reads /golden.txt from a volume's image in cluster 2.
func goldenTextOf(t *testing.T, v *csi.Volume) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "v.img")
	c2.rbd(t, "export", "--no-progress", "volumes/"+imageOf(t, v), file)
	out, err := exec.Command("debugfs", "-R", "cat /golden.txt", file).Output()
	if err != nil {
		t.Fatalf("debugfs: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// emptyCache removes every entry and retired image (the other tests count
// Basalt images in the pools), failing if one is still in use.
func emptyCache(t *testing.T, d *testDriver) {
	t.Helper()
	reg := registry(t, d)
	ctx := tctx(t)
	entries, err := reg.CacheEntries(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if err := reg.DropCacheEntry(ctx, e); err != nil {
			t.Fatal(err)
		}
		if err := reg.RetireCacheImage(ctx, records.RetiredCacheImage{Backend: e.Backend, Image: e.Image}); err != nil {
			t.Fatal(err)
		}
	}
	retiredGone(t, d)
	if left := cacheImages(t); len(left) > 0 {
		t.Fatalf("cache images left: %v", left)
	}
}

// retiredGone runs the recovery pass, which removes retired cache images,
// until none is left: the deleted clones that kept them go through the RBD
// trash, purged in the background a moment after their DeleteVolume.
func retiredGone(t *testing.T, d *testDriver) {
	t.Helper()
	reg := registry(t, d)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if _, err := d.prov.Recover(tctx(t), 0); err != nil {
			t.Fatal(err)
		}
		r, err := reg.RetiredCacheImages(tctx(t))
		if err == nil && len(r) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("retired cache images left 30 s after their last clone was deleted: %+v (%v)", r, err)
		}
	}
}

// The image-volume cache on real Ceph: concurrent first creates in the
// other cluster copy the golden image once and all clone that copy; a later
// create is a hit; a replaced golden snapshot gets a new entry (the old one
// is evicted, kept while its clones live, removed after); over maxCount the
// least recently used entry is evicted; nothing is left at the end.
func TestImageCache(t *testing.T) {
	d := startDriver(t, cacheYAML(2), nil)
	t.Cleanup(func() { emptyCache(t, d) })
	reg := registry(t, d)
	gold := makeGolden(t, "cachegold", "first text")
	params := map[string]string{"image": gold}

	// Concurrent first creates in zone-b: one copy, every volume a clone of it.
	const n = 4
	vols := make([]*csi.Volume, n)
	var wg sync.WaitGroup
	for i := range vols {
		wg.Add(1)
		go func() {
			defer wg.Done()
			vols[i] = create(t, d, fmt.Sprintf("pvc-cache-%d", i), gib, params, zoneReq("zone-b"))
		}()
	}
	wg.Wait()
	imgs := cacheImages(t)
	if len(imgs) != 1 {
		t.Fatalf("cache images after %d concurrent first creates: %v, want exactly one", n, imgs)
	}
	for _, v := range vols {
		i := info(t, c2, "volumes", imageOf(t, v))
		if i.Parent == nil || i.Parent.Image != imgs[0] || i.Parent.Snapshot != provision.CacheSnap || i.Size != gib {
			t.Fatalf("volume %s: %+v, want a 1 GiB clone of %s@%s", v.GetVolumeId(), i, imgs[0], provision.CacheSnap)
		}
	}
	if got := goldenTextOf(t, vols[0]); got != "first text" {
		t.Fatalf("golden.txt in a cache clone = %q", got)
	}
	hit := create(t, d, "pvc-cache-hit", gib, params, zoneReq("zone-b"))
	vols = append(vols, hit)
	// Hits are recorded in the background, right after the create.
	var entries []records.CacheEntry
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		entries, err = reg.CacheEntries(tctx(t))
		if err != nil || (len(entries) == 1 && entries[0].Hits > 0) || time.Now().After(deadline) {
			break
		}
	}
	if err != nil || len(entries) != 1 || entries[0].Hits != 1 || entries[0].Image != imgs[0] || entries[0].Source != gold {
		t.Fatalf("cache entries %+v (%v): want one, for %s, with one hit", entries, err, gold)
	}

	// The golden snapshot replaced under the same name: a new entry with
	// the new data; the old one is evicted as stale but kept (retired)
	// while its clones live.
	makeGolden(t, "cachegold", "second text")
	v2 := create(t, d, "pvc-cache-new", gib, params, zoneReq("zone-b"))
	if got := goldenTextOf(t, v2); got != "second text" {
		t.Fatalf("golden.txt after the golden snapshot was replaced = %q (served from the old cache entry?)", got)
	}
	entries, _ = reg.CacheEntries(tctx(t))
	if len(entries) != 1 || entries[0].Image == imgs[0] {
		t.Fatalf("cache entries after the replacement: %+v, want only a new one", entries)
	}
	retired, _ := reg.RetiredCacheImages(tctx(t))
	if len(retired) != 1 || retired[0].Image != imgs[0] {
		t.Fatalf("retired: %+v, want the old entry's image kept for its clones", retired)
	}
	for _, v := range vols {
		del(t, d, v.GetVolumeId())
	}
	retiredGone(t, d)
	if got := cacheImages(t); len(got) != 1 || got[0] != entries[0].Image {
		t.Fatalf("cache images: %v, want only %s", got, entries[0].Image)
	}

	// maxCount 2: a third image evicts the least recently used entry.
	v3 := create(t, d, "pvc-cache-golden", gib, map[string]string{"image": golden}, zoneReq("zone-b"))
	other := makeGolden(t, "cachegold2", "third text")
	v4 := create(t, d, "pvc-cache-other", gib, map[string]string{"image": other}, zoneReq("zone-b"))
	entries, _ = reg.CacheEntries(tctx(t))
	sources := map[string]bool{}
	for _, e := range entries {
		sources[e.Source] = true
	}
	if len(entries) != 2 || !sources[golden] || !sources[other] {
		t.Fatalf("entries over maxCount: %+v, want those of %s and %s", entries, golden, other)
	}
	if got := goldenTextOf(t, v4); got != "third text" {
		t.Fatalf("golden.txt = %q", got)
	}
	for _, v := range []*csi.Volume{v2, v3, v4} {
		del(t, d, v.GetVolumeId())
	}
	// The evicted entry's image goes once its last clone has left the
	// trash (purged in the background): the recovery pass, until then.
	retiredGone(t, d)
	if got := cacheImages(t); len(got) != 2 {
		t.Fatalf("cache images: %v, want the two entries'", got)
	}
	// `basalt-csi check` accounts for every cache image.
	findings, err := d.prov.Check(tctx(t), false, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range findings {
		if f.Kind == "orphan-cache-image" {
			t.Fatalf("check: %+v", f)
		}
	}
}

// A fill killed after its copy: the restarted controller takes the fill
// lock over, removes the partial image and fills again; one image is left.
func TestImageCacheFillCrash(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfg, []byte(cacheYAML(2)), 0o600); err != nil {
		t.Fatal(err)
	}
	gold := makeGolden(t, "cachecrash", "crash text")
	var id string
	for _, point := range []string{"after copy the golden image", "after snapshot the cache image"} {
		req := &csi.CreateVolumeRequest{Name: "pvc-cache-crash-" + strings.ReplaceAll(point, " ", "-"), VolumeCapabilities: mountCap(),
			CapacityRange: &csi.CapacityRange{RequiredBytes: gib}, Parameters: map[string]string{"image": gold}, AccessibilityRequirements: zoneReq("zone-b")}
		p := crashWith(t, cfg, point, func(ctx context.Context, p *proc) error {
			r, err := p.ctrl.CreateVolume(ctx, req)
			id = r.GetVolume().GetVolumeId()
			return err
		})
		if !strings.Contains(p.log.String(), "taking over an abandoned image-cache fill") {
			t.Fatalf("%s: the restarted controller did not take the fill over:\n%s", point, p.log)
		}
		if imgs := cacheImages(t); len(imgs) != 1 {
			t.Fatalf("%s: cache images after the retry: %v, want one", point, imgs)
		}
		if _, err := p.ctrl.DeleteVolume(opCtx(t), &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Fatal(err)
		}
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
		emptyCache(t, startDriver(t, cacheYAML(2), nil))
	}
}

// Two controllers (separate processes, other instance IDs) creating from
// one golden image in the other cluster at once: the durable fill lock
// makes them copy once; the loser waits and clones.
func TestImageCacheOneCopyAcrossControllers(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfg, []byte(cacheYAML(2)), 0o600); err != nil {
		t.Fatal(err)
	}
	gold := makeGolden(t, "cacheshared", "shared text")
	var procs []*proc
	for i := range 2 {
		procs = append(procs, startBinaryArgs(t, cfg, filepath.Join(t.TempDir(), "csi.sock"), []string{fmt.Sprintf("--instance-id=cache-ctl-%d", i)}))
	}
	var wg sync.WaitGroup
	ids := make([]string, 6)
	errs := make([]error, 6)
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := procs[i%2].ctrl.CreateVolume(opCtx(t), &csi.CreateVolumeRequest{Name: fmt.Sprintf("pvc-cache-shared-%d", i), VolumeCapabilities: mountCap(),
				CapacityRange: &csi.CapacityRange{RequiredBytes: gib}, Parameters: map[string]string{"image": gold}, AccessibilityRequirements: zoneReq("zone-b")})
			ids[i], errs[i] = r.GetVolume().GetVolumeId(), err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("create %d: %v\n%s\n%s", i, err, procs[0].log, procs[1].log)
		}
	}
	if imgs := cacheImages(t); len(imgs) != 1 {
		t.Fatalf("cache images after concurrent first creates in two controllers: %v, want one", imgs)
	}
	for _, id := range ids {
		if _, err := procs[0].ctrl.DeleteVolume(opCtx(t), &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Fatal(err)
		}
	}
	emptyCache(t, startDriver(t, cacheYAML(2), nil))
}
