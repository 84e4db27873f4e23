// fhec <version>: model.onnx
// encoding width 12 bits, 0 table lookups, 0 rounding bootstraps per sample
module {
  func.func @main(%arg0: tensor<1x4x!FHE.eint<12>>) -> (tensor<1x3x!FHE.eint<12>>) {
    %0 = arith.constant dense<[[-12, 4, 8], [16, -6, -10], [-21, -1, 22], [-21, -10, 31]]> : tensor<4x3xi13>
    %1 = "FHELinalg.matmul_eint_int"(%arg0, %0) : (tensor<1x4x!FHE.eint<12>>, tensor<4x3xi13>) -> tensor<1x3x!FHE.eint<12>>
    %2 = arith.constant dense<[2998, 675, 410]> : tensor<3xi13>
    %3 = "FHELinalg.add_eint_int"(%1, %2) : (tensor<1x3x!FHE.eint<12>>, tensor<3xi13>) -> tensor<1x3x!FHE.eint<12>>
    return %3 : tensor<1x3x!FHE.eint<12>>
  }
}
