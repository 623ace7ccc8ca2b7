package provision

import (
	"errors"
	"reflect"
	"testing"
)

func TestQoSMetadata(t *testing.T) {
	set, remove, err := QoSMetadata(map[string]string{"qosIopsLimit": "500", "qosWriteBpsLimit": "0", "other": "x"})
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"conf_rbd_qos_iops_limit": "500"}; !reflect.DeepEqual(set, want) {
		t.Errorf("set = %v, want %v", set, want)
	}
	if want := []string{"conf_rbd_qos_write_bps_limit"}; !reflect.DeepEqual(remove, want) {
		t.Errorf("remove = %v, want %v", remove, want)
	}
	for _, bad := range []string{"-1", "1.5", "lots", ""} {
		_, _, err := QoSMetadata(map[string]string{"qosBpsLimit": bad})
		var e *Error
		if !errors.As(err, &e) || e.Kind != InvalidArgument {
			t.Errorf("qosBpsLimit=%q: %v, want InvalidArgument", bad, err)
		}
	}
	if !IsQoSParam("qosReadIopsLimit") || IsQoSParam("backend") {
		t.Error("IsQoSParam")
	}
}
