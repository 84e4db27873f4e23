// fhec <version>: model.onnx
// encoding width 15 bits, 0 table lookups, 0 rounding bootstraps per sample
module {
  func.func @main(%arg0: tensor<1x4x!FHE.eint<15>>) -> (tensor<1x3x!FHE.eint<15>>) {
    %0 = arith.constant dense<[[-36, 27, 15], [47, -36, -20], [-63, -6, 45], [-61, -63, 63]]> : tensor<4x3xi16>
    %1 = "FHELinalg.matmul_eint_int"(%arg0, %0) : (tensor<1x4x!FHE.eint<15>>, tensor<4x3xi16>) -> tensor<1x3x!FHE.eint<15>>
    %2 = arith.constant dense<[17894, 8318, 1802]> : tensor<3xi16>
    %3 = "FHELinalg.add_eint_int"(%1, %2) : (tensor<1x3x!FHE.eint<15>>, tensor<3xi16>) -> tensor<1x3x!FHE.eint<15>>
    return %3 : tensor<1x3x!FHE.eint<15>>
  }
}
